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
    /// Make node certificates for mutual TLS between the nodes of a cluster, in --dir:
    /// `node-<id>.pem`/`node-<id>.key` per --node, signed by the cluster CA
    /// `cluster-ca.pem`/`cluster-ca.key`, which the first run makes and later runs reuse
    /// (so nodes can be added one command at a time). The cluster CA is not the client CA
    /// of `cert init`: any certificate it signs is a node.
    Node {
        /// Where the files go (created; existing node files are not overwritten).
        #[arg(long, default_value = "herald-certs")]
        dir: PathBuf,
        /// `ID=HOST[,HOST...]`: a node id and the names its certificate is valid for. Give
        /// at least the host of the node's peer address as `--initial-members` writes it
        /// (a DNS name or an IP address): the other nodes check the certificate against it.
        #[arg(long = "node", required = true, value_name = "ID=HOST[,HOST...]")]
        nodes: Vec<String>,
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
            let issuer = new_ca(&dir, "ca", "Herald CA", days)?;
            let leaf = |name: &str, sans: Vec<String>, usage: rcgen::ExtendedKeyUsagePurpose| {
                sign_leaf(&dir, &issuer, name, name, sans, vec![usage], days)
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
        CertCommand::Node { dir, nodes, days } => {
            let nodes = nodes
                .iter()
                .map(|node| parse_node(node))
                .collect::<anyhow::Result<Vec<_>>>()?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (ca_pem, ca_key) = (dir.join("cluster-ca.pem"), dir.join("cluster-ca.key"));
            let issuer = if ca_pem.exists() || ca_key.exists() {
                let key = std::fs::read_to_string(&ca_key)
                    .with_context(|| format!("reading {}", ca_key.display()))?;
                let pem = std::fs::read_to_string(&ca_pem)
                    .with_context(|| format!("reading {}", ca_pem.display()))?;
                let key = rcgen::KeyPair::from_pem(&key)
                    .with_context(|| format!("reading the key {}", ca_key.display()))?;
                let issuer = rcgen::Issuer::from_ca_cert_pem(&pem, key)
                    .with_context(|| format!("reading the CA {}", ca_pem.display()))?;
                println!("signing with the existing {}", ca_pem.display());
                issuer
            } else {
                let issuer = new_ca(&dir, "cluster-ca", "Herald cluster CA", days)?;
                println!("wrote {} and {}", ca_pem.display(), ca_key.display());
                issuer
            };
            for (id, hosts) in &nodes {
                let name = format!("node-{id}");
                sign_leaf(
                    &dir,
                    &issuer,
                    &name,
                    &format!("herald-{name}"),
                    hosts.clone(),
                    // One certificate both ways: the node serves its peer port and calls
                    // the other nodes' ports with it.
                    vec![
                        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
                    ],
                    days,
                )?;
                println!(
                    "wrote {}: {name}.pem, {name}.key (for {})",
                    dir.display(),
                    hosts.join(", ")
                );
            }
            println!(
                "keep cluster-ca.key offline; serve node N with --peer-tls-cert node-N.pem --peer-tls-key node-N.key --peer-tls-ca cluster-ca.pem"
            );
        }
    }
    Ok(())
}

/// `ID=HOST[,HOST...]` of `cert node --node`.
fn parse_node(text: &str) -> anyhow::Result<(u64, Vec<String>)> {
    let usage = || format!("--node {text:?}: write ID=HOST[,HOST...], e.g. 1=10.0.0.1");
    let (id, hosts) = text.split_once('=').with_context(usage)?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|id| *id >= 1)
        .with_context(usage)?;
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    anyhow::ensure!(!hosts.is_empty(), usage());
    Ok((id, hosts))
}

/// Makes a CA, writes `<file>.pem` and `<file>.key` into `dir` and returns its issuer.
fn new_ca(
    dir: &Path,
    file: &str,
    common_name: &str,
    days: u32,
) -> anyhow::Result<rcgen::Issuer<'static, rcgen::KeyPair>> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    (params.not_before, params.not_after) = validity(days);
    let cert = params.self_signed(&key)?;
    write_new(&dir.join(format!("{file}.pem")), &cert.pem())?;
    write_new(&dir.join(format!("{file}.key")), &key.serialize_pem())?;
    Ok(rcgen::Issuer::new(params, key))
}

/// Signs a certificate for `sans` (DNS names or IP addresses) with `issuer`; writes
/// `<file>.pem` and `<file>.key` into `dir`.
fn sign_leaf(
    dir: &Path,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    file: &str,
    common_name: &str,
    sans: Vec<String>,
    usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    days: u32,
) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = usages;
    (params.not_before, params.not_after) = validity(days);
    let cert = params.signed_by(&key, issuer)?;
    write_new(&dir.join(format!("{file}.pem")), &cert.pem())?;
    write_new(&dir.join(format!("{file}.key")), &key.serialize_pem())?;
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
