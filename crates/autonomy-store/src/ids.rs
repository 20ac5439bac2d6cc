//! Ids and secrets every backend makes the same way.

/// `prefix_` + 20 random hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(10))
}

/// A bearer token secret: 128 random bits.
pub fn new_secret() -> String {
    format!("aut_{}", random_hex(16))
}

/// Whether `s` has the shape of a secret [`new_secret`] makes (`aut_` and 32 lowercase hex
/// digits). Anything else cannot be a token, so it is refused without a store lookup: a
/// flood of forged tokens costs no database read.
pub fn is_secret_shaped(s: &str) -> bool {
    s.len() == 36
        && s.starts_with("aut_")
        && s[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Secrets are 128-bit random strings, so a fast hash is enough: there is nothing to guess.
pub fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // The OS RNG failing is not recoverable in any useful way; fall back to time + counter
        // entropy so ids stay unique, and say so.
        tracing::warn!("OS random source failed; using time-based ids");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            .to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = t[i % 8] ^ (i as u8);
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets_have_their_shape_and_differ() {
        let (a, b) = (new_id("evt"), new_id("evt"));
        assert!(a.starts_with("evt_") && a.len() == 24, "{a}");
        assert_ne!(a, b);
        let s = new_secret();
        assert!(s.starts_with("aut_") && s.len() == 36, "{s}");
        assert!(is_secret_shaped(&s));
        for bad in [
            "aut_forged",
            "",
            &s[..35],
            &s.to_uppercase(),
            &format!("{s}0"),
        ] {
            assert!(!is_secret_shaped(bad), "{bad}");
        }
        assert_eq!(hash_secret(&s), hash_secret(&s));
        assert_ne!(hash_secret(&s), hash_secret(&new_secret()));
    }
}
