//! `herald auth`, `herald acl` and `herald cert`: the offline helpers of a secured broker
//! (tokens and their hashes, the ACL file as the broker reads it, certificates).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use herald_broker::auth::{Acl, token};
use herald_broker::config::Config;

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Print a token and the `[[tokens]]` entry that makes the broker accept it. The
    /// broker keeps only the hash; give the token to the client (e.g. as HERALD_TOKEN).
    /// With --stdin, hash the token read from standard input instead of making one.
    HashToken {
        /// The principal the token authenticates.
        #[arg(long)]
        principal: String,
        /// Read the token from stdin (one line) instead of generating one.
        #[arg(long)]
        stdin: bool,
    },
}

#[derive(Subcommand)]
pub enum AclCommand {
    /// Check an ACL file and print its superusers and rules as the broker reads them.
    List {
        /// The ACL file [default: the `acl_file` of --config].
        #[arg(long)]
        file: Option<PathBuf>,
        /// A broker configuration file naming `acl_file`.
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Make a CA, a server certificate and client certificates in one go, in --dir:
    /// `ca.pem`/`ca.key`, `server.pem`/`server.key`, and `<name>.pem`/`<name>.key` per
    /// --client (the name is the client's principal). Valid for --days.
    Init {
        /// Where the files go (created; existing files are not overwritten).
        #[arg(long, default_value = "herald-certs")]
        dir: PathBuf,
        /// Names the server certificate is valid for (DNS names or IP addresses).
        #[arg(long = "server-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        server_names: Vec<String>,
        /// Client certificates to make, by principal name.
        #[arg(long = "client")]
        clients: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn auth(command: AuthCommand) -> anyhow::Result<()> {
    match command {
        AuthCommand::HashToken { principal, stdin } => {
            anyhow::ensure!(
                !principal.trim().is_empty(),
                "--principal must not be empty"
            );
            let token = if stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_to_string(&mut line)
                    .context("reading the token from stdin")?;
                let line = line.trim().to_owned();
                token::parse_authorization(format!("Bearer {line}").as_bytes())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                line
            } else {
                token::generate().context("generating a token")?
            };
            if !stdin {
                println!("# token for {principal:?} (give it to the client; it is not stored):");
                println!("# {token}");
            }
            println!("[[tokens]]");
            println!("principal = {principal:?}");
            println!("hash = {:?}", token::hash(&token));
        }
    }
    Ok(())
}

pub fn acl(command: AclCommand) -> anyhow::Result<()> {
    match command {
        AclCommand::List { file, config } => {
            let path = match (file, config) {
                (Some(file), _) => file,
                (None, Some(config)) => Config::from_file(&config)?
                    .acl_file
                    .with_context(|| format!("{} sets no acl_file", config.display()))?,
                (None, None) => anyhow::bail!("name the ACL file: --file or --config"),
            };
            let acl = Acl::load(&path)?;
            println!("# {}", path.display());
            let superusers: Vec<&str> = acl.superusers.iter().map(String::as_str).collect();
            println!(
                "superusers: {}",
                if superusers.is_empty() {
                    "(none)".to_owned()
                } else {
                    superusers.join(", ")
                }
            );
            if acl.rules.is_empty() {
                println!("no rules: only superusers may do anything");
            }
            for (i, rule) in acl.rules.iter().enumerate() {
                println!("{:>3}  {rule}", i + 1);
            }
        }
    }
    Ok(())
}

pub fn cert(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Init {
            dir,
            server_names,
            clients,
            days,
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (not_before, not_after) = validity(days);
            let ca_key = rcgen::KeyPair::generate()?;
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Herald CA");
            ca_params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            (ca_params.not_before, ca_params.not_after) = (not_before, not_after);
            let ca = ca_params.self_signed(&ca_key)?;
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            write_new(&dir.join("ca.pem"), &ca.pem())?;
            write_new(&dir.join("ca.key"), &issuer.key().serialize_pem())?;
            let leaf = |name: &str,
                        sans: Vec<String>,
                        usage: rcgen::ExtendedKeyUsagePurpose|
             -> anyhow::Result<()> {
                let key = rcgen::KeyPair::generate()?;
                let mut params = rcgen::CertificateParams::new(sans)?;
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, name);
                params.extended_key_usages = vec![usage];
                (params.not_before, params.not_after) = (not_before, not_after);
                let cert = params.signed_by(&key, &issuer)?;
                write_new(&dir.join(format!("{name}.pem")), &cert.pem())?;
                write_new(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
                Ok(())
            };
            leaf(
                "server",
                server_names.clone(),
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            )?;
            for client in &clients {
                anyhow::ensure!(
                    !client.is_empty()
                        && client
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                        && client != "ca"
                        && client != "server",
                    "--client {client:?}: use [A-Za-z0-9._-], not ca or server"
                );
                leaf(
                    client,
                    Vec::new(),
                    rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                )?;
            }
            println!(
                "wrote {}: ca.pem, ca.key, server.pem, server.key (for {}){}",
                dir.display(),
                server_names.join(", "),
                clients
                    .iter()
                    .map(|c| format!(", {c}.pem, {c}.key"))
                    .collect::<String>()
            );
            println!("keep ca.key offline; serve with --tls-cert server.pem --tls-key server.key");
        }
    }
    Ok(())
}

/// From a day ago (clocks drift) to `days` from now.
fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(i64::from(days.max(1))),
    )
}

/// Writes a new file (never over an existing one), readable by its owner only when it is
/// a key.
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if path.extension().is_some_and(|e| e == "key") {
        0o600
    } else {
        0o644
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
