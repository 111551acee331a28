//! The credentials a config carries: bootstrap tokens (contract 6.5) and the certificate key that
//! encrypts `kubeadm-certs` (6.3). A token's secret half appears only where the operator asked for
//! it: Display is the full token, Debug and every error show the ID alone.

use std::fmt;

use rand::Rng;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: String,
}

fn valid_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// A token ID alone: `[a-z0-9]{6}`.
pub fn is_token_id(s: &str) -> bool {
    valid_part(s, 6)
}

/// The usages a bootstrap token may have.
pub const USAGES: [&str; 2] = ["signing", "authentication"];

/// kubeadm's rule for a token's extra groups: `system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]`.
pub fn is_token_group(g: &str) -> bool {
    let Some(rest) = g.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    let inner = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    rest.len() <= 256
        && rest.bytes().last().is_some_and(inner)
        && rest.bytes().all(|b| inner(b) || b == b':' || b == b'-')
}

impl Token {
    /// `[a-z0-9]{6}.[a-z0-9]{16}`; the error never repeats the secret.
    pub fn parse(text: &str) -> Result<Token, String> {
        match text.split_once('.') {
            Some((id, secret)) if valid_part(id, 6) && valid_part(secret, 16) => Ok(Token {
                id: id.into(),
                secret: secret.into(),
            }),
            _ => Err(
                "the token does not have the form [a-z0-9]{6}.[a-z0-9]{16} (an ID and a secret of lowercase letters and digits)".into(),
            ),
        }
    }

    /// A fresh token from the operating system's CSPRNG.
    pub fn generate() -> Token {
        let mut rng = rand::rng();
        let mut part = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        Token {
            id: part(6),
            secret: part(16),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Token({}.<redacted>)", self.id)
    }
}

/// The 32-byte AES key of `kubeadm-certs`, written as 64 hex characters.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateKey([u8; 32]);

impl CertificateKey {
    pub fn parse(hex_key: &str) -> Result<CertificateKey, String> {
        let bytes = hex::decode(hex_key.trim()).ok().filter(|b| b.len() == 32).ok_or(
            "the certificate key must be 64 hex characters (32 bytes); `kubeforge certs certificate-key` makes one",
        )?;
        Ok(CertificateKey(bytes.try_into().expect("32 bytes")))
    }

    pub fn generate() -> CertificateKey {
        let mut key = [0u8; 32];
        rand::rng().fill(&mut key);
        CertificateKey(key)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("CertificateKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_generate_and_never_show_their_secret_in_debug() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!((t.id(), t.secret()), ("abcdef", "0123456789abcdef"));
        assert_eq!(t.to_string(), "abcdef.0123456789abcdef");
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
        for bad in [
            "abcdef",
            "ABCDEF.q1w2e3r4t5y6u7i8",
            "abcde.q1w2e3r4t5y6u7i8",
            "abcdef.q1w2e3r4t5y6u7i8o",
            "abcdef0123456789abcdef",
        ] {
            let e = Token::parse(bad).unwrap_err();
            assert!(!e.contains("q1w2e3r4"), "{e}");
        }
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a, b);
        assert!(Token::parse(&a.to_string()).is_ok());
    }

    #[test]
    fn token_groups_follow_kubeadms_pattern() {
        assert!(is_token_group(
            "system:bootstrappers:kubeadm:default-node-token"
        ));
        assert!(!is_token_group("admins"));
        assert!(!is_token_group("system:bootstrappers:"));
        assert!(!is_token_group("system:bootstrappers:Worker"));
        assert!(!is_token_group("system:bootstrappers:workers-"));
    }

    #[test]
    fn certificate_keys_are_64_hex_characters() {
        let k = CertificateKey::generate();
        assert_eq!(CertificateKey::parse(&k.to_string()).unwrap(), k);
        assert!(CertificateKey::parse("00").is_err());
        assert!(CertificateKey::parse(&"zz".repeat(32)).is_err());
        assert!(!format!("{k:?}").contains(&k.to_string()));
    }
}
