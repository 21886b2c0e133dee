//! What a client controls before it is authenticated: the `authorization` metadata value,
//! the client certificate's bytes (after the handshake verified its chain, but its subject
//! is still the client's choice) and, for the operator, the ACL file. None of them may
//! panic the broker. A parsed token is visible ASCII within the size limit and parses back
//! to itself; an unknown token never authenticates.
#![no_main]

use arbitrary::Arbitrary;
use herald_broker::auth::identity::principal_of_certificate;
use herald_broker::auth::token::{self, MAX_TOKEN_BYTES, TokenEntry, Tokens};
use herald_broker::auth::{Acl, Operation, Resource};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Authorization(Vec<u8>),
    Certificate(Vec<u8>),
    AclFile(String, String, String),
}

fuzz_target!(|input: Input| {
    match input {
        Input::Authorization(value) => {
            let known = Tokens::new(&[TokenEntry {
                principal: "p".into(),
                hash: token::hash("the-one-token"),
            }])
            .unwrap();
            if let Ok(parsed) = token::parse_authorization(&value) {
                assert!(!parsed.is_empty() && parsed.len() <= MAX_TOKEN_BYTES);
                assert!(parsed.bytes().all(|b| b.is_ascii_graphic()));
                let again = format!("Bearer {parsed}");
                assert_eq!(token::parse_authorization(again.as_bytes()), Ok(parsed));
                assert_eq!(known.principal(parsed).is_some(), parsed == "the-one-token");
            }
        }
        Input::Certificate(der) => {
            std::hint::black_box(principal_of_certificate(&der));
        }
        Input::AclFile(text, principal, name) => {
            if let Ok(acl) = Acl::parse(&text) {
                for operation in [Operation::Publish, Operation::Consume, Operation::Delete] {
                    std::hint::black_box(acl.allows(&principal, operation, Resource::topic(&name)));
                    std::hint::black_box(acl.allows(&principal, operation, Resource::group(&name)));
                    std::hint::black_box(acl.allows(&principal, operation, Resource::any_topic()));
                }
                for rule in &acl.rules {
                    std::hint::black_box(rule.to_string());
                }
            }
        }
    }
});
