//! What a bootstrap token proves (contract 6.7, 7.1): the cluster-info JWS, made and checked with
//! the token, and the CA pin of the join command.

use anyhow::Result;
use aws_lc_rs::{constant_time, hmac};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::config::Token;

/// A bootstrap token Secret's data value as text.
pub fn secret_field(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The bootstrapsigner's detached JWS over `content`: `b64url(header)..b64url(HS256)`, the
/// header `{"alg":"HS256","kid":"<id>"}`, keyed with the token secret.
pub fn detached_jws(content: &str, token: &Token) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, token.id()));
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(content));
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.secret().as_bytes());
    let signature = hmac::sign(&key, signing_input.as_bytes());
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

/// Whether `jws` is the token's signature of `content` (constant-time comparison).
pub fn jws_is_valid(jws: &str, content: &str, token: &Token) -> bool {
    let expected = detached_jws(content, token);
    constant_time::verify_slices_are_equal(expected.as_bytes(), jws.as_bytes()).is_ok()
}

/// `sha256:<hex>` over the certificate's DER SubjectPublicKeyInfo: kubeadm's
/// `--discovery-token-ca-cert-hash`.
pub fn ca_pin(cert_der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| anyhow::anyhow!("parsing the CA certificate: {e}"))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jws_header_is_kubeadms() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let jws = detached_jws("x", &t);
        assert!(
            jws.starts_with("eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9.."),
            "{jws}"
        );
    }

    /// HS256 over `b64url(header).b64url(content)` computed by Python's hmac, not by kubeforge.
    fn python_jws(content: &str, id: &str, secret: &str) -> String {
        let script = r#"
import base64, hashlib, hmac, sys
content, kid, secret = sys.argv[1:4]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
header = b64(('{"alg":"HS256","kid":"%s"}' % kid).encode())
mac = hmac.new(secret.encode(), (header + "." + b64(content.encode())).encode(), hashlib.sha256)
sys.stdout.write(header + ".." + b64(mac.digest()))
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script, content, id, secret])
            .output()
            .expect("python3");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn jws_matches_an_independent_hmac_and_rejects_what_it_should() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let content = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://10.0.0.1:6443\n";
        let theirs = python_jws(content, "abcdef", "0123456789abcdef");
        assert_eq!(detached_jws(content, &t), theirs);
        assert!(jws_is_valid(&theirs, content, &t));
        // Tampered content, another token's secret, a truncated signature: all refused.
        assert!(!jws_is_valid(
            &theirs,
            &content.replace("10.0.0.1", "10.0.0.2"),
            &t
        ));
        let other = python_jws(content, "abcdef", "0123456789abcdeg");
        assert!(!jws_is_valid(&other, content, &t));
        assert!(!jws_is_valid(&theirs[..theirs.len() - 2], content, &t));
        assert!(!jws_is_valid("", content, &t));
    }

    #[test]
    fn ca_pin_matches_openssl() {
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, ca.pem()).unwrap();
        let pipeline = format!(
            "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
            path.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &pipeline])
            .output()
            .unwrap();
        assert!(out.status.success());
        let openssl = String::from_utf8(out.stdout).unwrap();
        let hex = openssl.split_whitespace().next().unwrap();
        assert_eq!(ca_pin(ca.der()).unwrap(), format!("sha256:{hex}"));
    }
}
