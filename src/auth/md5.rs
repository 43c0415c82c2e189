//! The MD5 password response PostgreSQL expects after
//! `AuthenticationMD5Password`.
//!
//! Spec: <https://www.postgresql.org/docs/current/auth-password.html> and
//! `AuthenticationMD5Password`/`PasswordMessage` in
//! <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use ::md5::{Digest, Md5};

/// `"md5" + hex(md5(hex(md5(password + user)) + salt))`, the
/// `PasswordMessage` payload for `AuthenticationMD5Password` with `salt`
/// (without the NUL terminator the message needs).
pub(crate) fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> Vec<u8> {
    let inner = hex(&Md5::new()
        .chain_update(password)
        .chain_update(user)
        .finalize());
    let outer = Md5::new().chain_update(inner).chain_update(salt).finalize();
    let mut response = b"md5".to_vec();
    response.extend_from_slice(&hex(&outer));
    response
}

/// Lower-case hex digits of `bytes`.
fn hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with Python's hashlib.
    #[test]
    fn matches_postgres_md5_response() {
        assert_eq!(
            md5_password("postgres", "postgres", [1, 2, 3, 4]),
            b"md568be9ed08db75f318087ab337aaea044"
        );
        assert_eq!(
            md5_password("alice", "pâté", [0xde, 0xad, 0xbe, 0xef]),
            b"md5a0abf141eabbfa9f77fdf6954d947fc2"
        );
    }

    #[test]
    fn inner_hash_is_the_stored_md5_secret() {
        // pg_authid stores "md5" + hex(md5(password + user)):
        // "md53175bce1d3201d16594cebf9d7eb3f9d" for postgres/postgres.
        let inner = hex(&Md5::new()
            .chain_update("postgres")
            .chain_update("postgres")
            .finalize());
        assert_eq!(inner, b"3175bce1d3201d16594cebf9d7eb3f9d");
    }

    #[test]
    fn salt_changes_the_response() {
        assert_ne!(
            md5_password("u", "p", [0, 0, 0, 0]),
            md5_password("u", "p", [0, 0, 0, 1])
        );
    }
}
