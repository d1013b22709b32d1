//! The stderr of a command exec'd in a container: its last bytes for the error message, its error lines (PostgreSQL's severities, with the `LINE`/`DETAIL`/`HINT`/`CONTEXT` lines under them), each line logged.

/// At most this much of a command's stderr is kept for the error message.
pub(super) const STDERR_TAIL: usize = 2048;

/// At most this many error lines of a command's stderr are kept.
const MAX_ERROR_LINES: usize = 20;

/// Does a stderr line report an error (PostgreSQL's severities, as `psql` prints them)?
pub(crate) fn is_error_line(line: &str) -> bool {
    ["ERROR:", "FATAL:", "PANIC:"]
        .iter()
        .any(|m| line.contains(m))
}

/// Keeps the last bytes of stderr and its error lines, and logs it line by line.
#[derive(Default)]
pub(super) struct Stderr {
    pub(super) tail: Vec<u8>,
    partial: Vec<u8>,
    pub(super) errors: Vec<String>,
    pub(super) error_count: usize,
    /// The last line was (part of) a kept error.
    in_error: bool,
}

/// A line PostgreSQL prints under an error (`LINE 2: …`, `DETAIL:`, `HINT:`, `CONTEXT:`).
fn is_error_detail(line: &str) -> bool {
    let t = line.trim_start();
    ["LINE ", "DETAIL:", "HINT:", "CONTEXT:"]
        .iter()
        .any(|p| t.starts_with(p))
        || line.contains(": DETAIL:")
        || line.contains(": HINT:")
        || line.contains(": CONTEXT:")
}

impl Stderr {
    pub(super) fn push(&mut self, who: &str, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > STDERR_TAIL {
            let cut = self.tail.len() - STDERR_TAIL;
            self.tail.drain(..cut);
        }
        self.partial.extend_from_slice(bytes);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.line(who, &line);
        }
    }
    fn line(&mut self, who: &str, line: &[u8]) {
        let line = String::from_utf8_lossy(line).trim_end().to_string();
        tracing::info!(container = who, stderr = %line, "command output");
        if is_error_line(&line) {
            self.error_count += 1;
            self.in_error = self.errors.len() < MAX_ERROR_LINES;
            if self.in_error {
                self.errors.push(line);
            }
        } else if self.in_error && is_error_detail(&line) {
            // psql's LINE/DETAIL/HINT/CONTEXT lines belong to the error above.
            if let Some(last) = self.errors.last_mut() {
                last.push_str(" | ");
                last.push_str(line.trim());
            }
        } else if !line.trim_start().starts_with('^') {
            self.in_error = false;
        }
    }
    pub(super) fn finish(&mut self, who: &str) -> String {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.line(who, &rest);
        }
        let t = String::from_utf8_lossy(&self.tail).trim().to_string();
        if t.is_empty() {
            String::new()
        } else {
            format!("; its stderr ends with: {t}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_kept_with_their_details() {
        let mut e = Stderr::default();
        e.push(
            "c",
            b"NOTICE:  role \"x\" does not exist, skipping\npsql:<stdin>:5: ERROR:  type \"nosuchtype\" does not exist\nLINE 2:   a nosuchtype,\n",
        );
        e.push(
            "c",
            b"            ^\nsome other line\npsql:<stdin>:9: ERROR:  second",
        );
        let tail = e.finish("c");
        assert_eq!(e.error_count, 2);
        assert_eq!(
            e.errors,
            vec![
                "psql:<stdin>:5: ERROR:  type \"nosuchtype\" does not exist | LINE 2:   a nosuchtype,",
                "psql:<stdin>:9: ERROR:  second",
            ]
        );
        assert!(tail.contains("second"), "{tail}");
        assert!(!is_error_line("NOTICE:  skipping") && is_error_line("FATAL:  no"));
    }
}
