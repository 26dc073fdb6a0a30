//! Both ends prove they hold the same secret (a token file) without sending it: each answers
//! the other's random challenge with HMAC-SHA256(token, role || challenge).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::wire::{Conn, Msg};
use super::MigrateError;

/// The protocol version both ends must speak.
pub const VERSION: u32 = 1;

/// The largest message taken from a peer not yet authenticated.
const PRE_AUTH_MAX: usize = 4096;

/// The secret shared by the two ends.
pub struct Token(Vec<u8>);

/// Never prints the secret.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads a token file: at least 16 bytes (surrounding whitespace ignored), readable by its
    /// owner only.
    pub fn load(p: &Path) -> Result<Token, MigrateError> {
        let bad = |what: String| MigrateError::Token {
            path: p.display().to_string(),
            what,
        };
        let meta = std::fs::metadata(p).map_err(|e| bad(e.to_string()))?;
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:o}: must be readable by its owner only (chmod 600)",
                meta.mode() & 0o777
            )));
        }
        let data = std::fs::read(p).map_err(|e| bad(e.to_string()))?;
        let t = data.trim_ascii();
        if t.len() < 16 {
            return Err(bad(format!(
                "{} bytes: expected a secret of at least 16 bytes (e.g. head -c 32 /dev/urandom | base64)",
                t.len()
            )));
        }
        Ok(Token(t.to_vec()))
    }

    fn mac(&self, role: &str, nonce: &str) -> String {
        // Hmac::new_from_slice accepts keys of any length.
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        m.update(role.as_bytes());
        m.update(nonce.as_bytes());
        hex(&m.finalize().into_bytes())
    }

    fn verify(&self, role: &str, nonce: &str, mac: &str) -> bool {
        let want = self.mac(role, nonce);
        // Constant time: compare every byte.
        want.len() == mac.len()
            && want
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn nonce() -> Result<String, MigrateError> {
    let mut b = [0u8; 32];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: getrandom writes at most len bytes into the buffer it is given.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(MigrateError::Io(e));
        }
        got += n as usize;
    }
    Ok(hex(&b))
}

/// The receiving end: challenge the sender, check its answer, answer its challenge.
pub fn accept(c: &mut Conn, token: &Token) -> Result<(), MigrateError> {
    let ours = nonce()?;
    c.send(&Msg::Hello {
        version: VERSION,
        nonce: ours.clone(),
    })?;
    match c.recv_max(PRE_AUTH_MAX)? {
        Msg::Auth { mac, nonce } if token.verify("sender", &ours, &mac) => {
            c.send(&Msg::Auth {
                mac: token.mac("receiver", &nonce),
                nonce: String::new(),
            })?;
            Ok(())
        }
        Msg::Auth { .. } => {
            let _ = c.send(&Msg::Refuse {
                reason: "authentication failed: the token files differ".into(),
            });
            Err(MigrateError::Auth(
                "the sender's token does not match ours".into(),
            ))
        }
        m => Err(MigrateError::Protocol(format!("expected auth, got {m:?}"))),
    }
}

/// The sending end: answer the receiver's challenge, then check it answers ours.
pub fn connect(c: &mut Conn, token: &Token) -> Result<(), MigrateError> {
    let theirs = match c.recv_max(PRE_AUTH_MAX)? {
        Msg::Hello { version, nonce } if version == VERSION => nonce,
        Msg::Hello { version, .. } => {
            return Err(MigrateError::Protocol(format!(
                "the receiver speaks migration protocol {version}, we speak {VERSION}"
            )))
        }
        m => return Err(MigrateError::Protocol(format!("expected hello, got {m:?}"))),
    };
    let ours = nonce()?;
    c.send(&Msg::Auth {
        mac: token.mac("sender", &theirs),
        nonce: ours.clone(),
    })?;
    match c.recv_max(PRE_AUTH_MAX)? {
        Msg::Auth { mac, .. } if token.verify("receiver", &ours, &mac) => Ok(()),
        Msg::Auth { .. } => Err(MigrateError::Auth(
            "the receiver does not hold our token".into(),
        )),
        Msg::Refuse { reason } => Err(MigrateError::Auth(format!("receiver: {reason}"))),
        m => Err(MigrateError::Protocol(format!("expected auth, got {m:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_depends_on_token_role_and_nonce() {
        let a = Token(b"0123456789abcdef".to_vec());
        let b = Token(b"0123456789abcdeX".to_vec());
        let m = a.mac("sender", "n1");
        assert_eq!(m.len(), 64);
        assert!(a.verify("sender", "n1", &m));
        assert!(!b.verify("sender", "n1", &m));
        assert!(!a.verify("receiver", "n1", &m));
        assert!(!a.verify("sender", "n2", &m));
        assert!(!a.verify("sender", "n1", &m[..63]));
    }

    #[test]
    fn handshake_succeeds_with_one_secret_and_fails_with_two() {
        use std::net::{TcpListener, TcpStream};
        for (theirs, ok) in [
            (&b"0123456789abcdef"[..], true),
            (b"fedcba9876543210", false),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let theirs = theirs.to_vec();
            let rx = std::thread::spawn(move || {
                let (s, _) = l.accept().unwrap();
                accept(&mut Conn { stream: s }, &Token(theirs)).is_ok()
            });
            let mut c = Conn {
                stream: TcpStream::connect(addr).unwrap(),
            };
            let sent = connect(&mut c, &Token(b"0123456789abcdef".to_vec()));
            assert_eq!(sent.is_ok(), ok, "{sent:?}");
            assert_eq!(rx.join().unwrap(), ok);
        }
        // A peer that sends a huge first message is cut off before anything is allocated.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let rx = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            accept(
                &mut Conn { stream: s },
                &Token(b"0123456789abcdef".to_vec()),
            )
            .unwrap_err()
            .to_string()
        });
        let mut s = TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, &(1u32 << 30).to_be_bytes()).unwrap();
        assert!(rx.join().unwrap().contains("at most 4096"));
    }

    #[test]
    fn token_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t");
        std::fs::write(&p, "short\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::load(&p)
            .unwrap_err()
            .to_string()
            .contains("16 bytes"));
        std::fs::write(&p, "a-long-enough-secret\n").unwrap();
        assert!(Token::load(&p).is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Token::load(&p)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
    }
}
