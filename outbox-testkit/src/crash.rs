//! Helpers for real-process crash tests (`harness = false` test binaries
//! that re-run themselves as a child and SIGKILL it), native only.

use std::io::BufRead;

/// What this run of a crash-test binary is to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Role {
    /// Run as the child: the value of the child environment variable.
    Child(String),
    /// Run the test (as the parent).
    Parent,
    /// Do nothing: `--list`, or a filter that does not match `name`
    /// (already reported on stdout).
    Skip,
}

/// Decides the role from the environment variable `child_env` and the
/// arguments cargo passes: `--list` lists `name`, a name filter that does
/// not match skips (and says so).
pub fn role(name: &str, child_env: &str) -> Role {
    if let Ok(v) = std::env::var(child_env) {
        return Role::Child(v);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{name}: test");
        return Role::Skip;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("{name}: 0 passed, 0 failed, 1 skipped (filtered out)");
        return Role::Skip;
    }
    Role::Parent
}

/// The number in environment variable `var`, or `default`.
pub fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The seed in `OUTBOX_CRASH_SEED`, or one from the clock (print it, so a
/// failing run can be replayed).
pub fn seed() -> u64 {
    std::env::var("OUTBOX_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
    })
}

/// The next complete (newline-terminated) line, without its newline;
/// `None` at end of input or on a partial last line (a child killed
/// mid-write never reported it).
pub fn complete_line(reader: &mut impl BufRead) -> Option<String> {
    let mut buf = String::new();
    match reader.read_line(&mut buf) {
        Ok(n) if n > 0 && buf.ends_with('\n') => Some(buf.trim_end().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_are_not_reports() {
        let mut r = std::io::Cursor::new(b"C a 1 2\nA x y\npartial".to_vec());
        assert_eq!(complete_line(&mut r).as_deref(), Some("C a 1 2"));
        assert_eq!(complete_line(&mut r).as_deref(), Some("A x y"));
        assert_eq!(complete_line(&mut r), None);
        assert_eq!(complete_line(&mut r), None);
    }
}
