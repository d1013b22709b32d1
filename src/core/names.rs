//! Volume names: Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 255 bytes, checked once where a name enters (a Docker call, a command line, a record) and carried as a [`VolumeName`] from there on: only a `VolumeName` builds a path.

/// Longest accepted volume name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Check a name against the rule (volume names are checked by [`VolumeName::parse`]; pools and
/// remotes follow the same rule and use this); the error says what was wrong.
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

/// A volume name that passed Docker's rule (so it is one path component, never `.` or `..`).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeName(String);

impl VolumeName {
    /// Check `s`; the error says what was wrong and what is accepted.
    pub fn parse(s: &str) -> Result<VolumeName, String> {
        validate(s)?;
        Ok(VolumeName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// A name written in the code (tests, fixtures); panics on an invalid one, as
    /// `Regex::new(LITERAL).unwrap()` does.
    pub fn fixed(s: &str) -> VolumeName {
        VolumeName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }
    /// `true` when `s` is a valid name (for filtering directory listings).
    pub fn is_valid(s: &str) -> bool {
        validate(s).is_ok()
    }
}

impl std::str::FromStr for VolumeName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        VolumeName::parse(s)
    }
}

impl TryFrom<String> for VolumeName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        validate(&s)?;
        Ok(VolumeName(s))
    }
}

impl From<VolumeName> for String {
    fn from(n: VolumeName) -> String {
        n.0
    }
}

impl std::ops::Deref for VolumeName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for VolumeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for VolumeName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl AsRef<std::ffi::OsStr> for VolumeName {
    fn as_ref(&self) -> &std::ffi::OsStr {
        std::ffi::OsStr::new(&self.0)
    }
}

impl std::borrow::Borrow<str> for VolumeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for VolumeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for VolumeName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for VolumeName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for VolumeName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::{validate, VolumeName};

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

    #[test]
    fn a_name_is_checked_once_when_it_enters() {
        let n: VolumeName = "pg-data".parse().unwrap();
        assert_eq!(n.as_str(), "pg-data");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"pg-data\"");
        let err = serde_json::from_str::<VolumeName>("\"../etc\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("must start with a letter or digit"),
            "{err}"
        );
        assert!(VolumeName::parse("a/b").is_err());
    }
}
