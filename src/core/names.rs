//! Volume names: Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 255 bytes.

/// Longest accepted volume name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Check a volume name; the error says what was wrong and what is accepted.
pub fn validate(name: &str) -> Result<(), String> {
    const RULE: &str = "names must match [a-zA-Z0-9][a-zA-Z0-9_.-]* and be at most 255 bytes";
    if name.is_empty() {
        return Err(format!("volume name is empty; {RULE}"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("volume name is {} bytes long; {RULE}", name.len()));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or(' ');
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "invalid volume name {:?}: it must start with a letter or digit; {RULE}",
            name
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "invalid volume name {:?}: character {:?} is not allowed; {RULE}",
            name, bad
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_docker_names() {
        for ok in ["a", "postgres-data", "v1.2_3", "0abc", &"x".repeat(255)] {
            assert!(validate(ok).is_ok(), "{ok} refused");
        }
    }

    #[test]
    fn refuses_paths_and_control_characters() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-a",
            "_a",
            "a\0b",
            "a\nb",
            "é",
            &"x".repeat(256),
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
    }
}
