//! Bounds on what an input file may ask for, and the checks that hold files to them before
//! anything is allocated or indexed from their numbers.
//!
//! A check returns `Err("field: what is wrong")`; the reader of the file wraps it into an
//! [`Error::Format`](crate::Error::Format) naming the file.

/// Transformer blocks of one model. No public model comes near (Llama 3.1 405B has 126).
pub const MAX_LAYERS: usize = 1024;
/// Individuals in a search population.
pub const MAX_POPULATION: usize = 65_536;
/// Entries in a model's vocabulary.
pub const MAX_VOCAB: usize = 1 << 22;

/// What a check says: nothing, or the field and what is wrong with it.
pub type Check = std::result::Result<(), String>;

/// Prefix a failed check with the field that holds the checked value.
pub fn field(name: impl std::fmt::Display, check: Check) -> Check {
    check.map_err(|m| format!("{name}.{m}"))
}

/// A SHA-256 digest written as 64 hexadecimal digits.
pub fn sha256(name: &str, value: &str) -> Check {
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("{name}: '{}' is not a SHA-256 digest (64 hexadecimal digits)", crate::util::short_text(value, 80)))
    }
}

/// A count between `lo` and `hi`, inclusive.
pub fn count(name: &str, value: usize, lo: usize, hi: usize) -> Check {
    if (lo..=hi).contains(&value) { Ok(()) } else { Err(format!("{name}: {value} is not between {lo} and {hi}")) }
}

/// A number that is not NaN (infinities allowed: they mark failed evaluations).
pub fn number(name: &str, value: f64) -> Check {
    if value.is_nan() { Err(format!("{name}: is not a number")) } else { Ok(()) }
}

/// Token-id sequences: at least one, none empty, every id inside the vocabulary when it is
/// known (`vocab`), `hash` their [`hash_ids`](crate::fitness::calibration::hash_ids).
pub fn token_samples(name: &str, samples: &[Vec<u32>], hash: &str, vocab: Option<usize>) -> Check {
    if samples.is_empty() {
        return Err(format!("{name}: no samples"));
    }
    for (i, s) in samples.iter().enumerate() {
        if s.is_empty() {
            return Err(format!("{name}[{i}]: no tokens"));
        }
        if let Some(v) = vocab {
            if let Some(&id) = s.iter().find(|&&id| id as usize >= v) {
                return Err(format!("{name}[{i}]: token id {id} is outside the model's vocabulary of {v}"));
            }
        }
    }
    if crate::fitness::calibration::hash_ids(samples) != hash {
        return Err("hash: does not match the token ids".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_field() {
        assert!(sha256("sha256", &"ab".repeat(32)).is_ok());
        assert_eq!(sha256("sha256", "ab").unwrap_err(), "sha256: 'ab' is not a SHA-256 digest (64 hexadecimal digits)");
        // multi-byte characters never split
        let e = sha256("sha256", &"é".repeat(64)).unwrap_err();
        assert!(e.starts_with("sha256: 'éé"), "{e}");
        assert_eq!(field("model", count("layers", 0, 1, 4)).unwrap_err(), "model.layers: 0 is not between 1 and 4");
        assert!(number("x", f64::NEG_INFINITY).is_ok());
        assert!(number("x", f64::NAN).is_err());
        let s = vec![vec![1, 2], vec![3]];
        let h = crate::fitness::calibration::hash_ids(&s);
        assert!(token_samples("samples", &s, &h, Some(4)).is_ok());
        assert_eq!(token_samples("samples", &s, &h, Some(3)).unwrap_err(), "samples[1]: token id 3 is outside the model's vocabulary of 3");
        assert_eq!(token_samples("samples", &[vec![1], vec![]], &h, None).unwrap_err(), "samples[1]: no tokens");
        assert_eq!(token_samples("samples", &s, &"0".repeat(64), None).unwrap_err(), "hash: does not match the token ids");
        assert_eq!(token_samples("samples", &[], &h, None).unwrap_err(), "samples: no samples");
    }
}
