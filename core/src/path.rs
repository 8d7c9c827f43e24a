//! Turning a peer's path into a safe relative path, or refusing it; escaping names for
//! display.

use std::fmt;

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component, in bytes (the common filesystem limit).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Deepest accepted nesting.
pub const MAX_DEPTH: usize = 128;

/// A relative path that was checked to stay inside the output directory: non-empty
/// `/`-separated components, none of them empty, `.` or `..`, no NUL, no backslash, no
/// drive prefix, within length and depth limits.
///
/// Only [`SafePath::parse`] builds one, so an unchecked peer name cannot reach the
/// runtime's filesystem code. (Symlinks in parent directories are the runtime's to
/// refuse: the core cannot see the filesystem.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafePath(String);

/// Why a peer's path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path is empty.
    Empty,
    /// It starts with `/`.
    Absolute,
    /// It contains a backslash or a drive prefix (Windows forms).
    WindowsForm,
    /// It contains a NUL byte.
    Nul,
    /// Its file name has the form of a partial file (see [`partial_name`]).
    Reserved,
    /// A component is empty or `.`.
    EmptyComponent,
    /// A component is `..`.
    ParentComponent,
    /// Too long or too deep.
    TooLong,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Empty => "empty path",
            PathError::Absolute => "absolute path",
            PathError::WindowsForm => "Windows-style path (backslash or drive)",
            PathError::Nul => "NUL byte in path",
            PathError::Reserved => "name reserved for partial files",
            PathError::EmptyComponent => "empty or '.' component in path",
            PathError::ParentComponent => "'..' component in path",
            PathError::TooLong => "path too long or too deep",
        })
    }
}

impl SafePath {
    /// Check a peer's path.
    ///
    /// # Errors
    /// A [`PathError`] naming the first rule the path breaks.
    pub fn parse(raw: &str) -> Result<SafePath, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.contains('\0') {
            return Err(PathError::Nul);
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if raw.contains('\\') {
            return Err(PathError::WindowsForm);
        }
        let b = raw.as_bytes();
        if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
            return Err(PathError::WindowsForm);
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        let mut depth = 0;
        for c in raw.split('/') {
            depth += 1;
            match c {
                "" | "." => return Err(PathError::EmptyComponent),
                ".." => return Err(PathError::ParentComponent),
                _ if c.len() > MAX_COMPONENT_LEN => return Err(PathError::TooLong),
                _ => {}
            }
        }
        if depth > MAX_DEPTH {
            return Err(PathError::TooLong);
        }
        let name = raw.rsplit('/').next().unwrap_or(raw);
        if name.starts_with('.') && name.ends_with(PARTIAL_SUFFIX) {
            // Another entry's partial file could otherwise be committed over this one.
            return Err(PathError::Reserved);
        }
        Ok(SafePath(raw.to_owned()))
    }

    /// The file name (last component).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The path as sent on the wire (`/`-separated).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The parent directories, outermost first, as prefixes of this path (`a`, `a/b`
    /// for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(move |(i, _)| &self.0[..i])
    }
}

/// A rule of Windows file naming (which exFAT, NTFS and SMB shares enforce as well).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowsRule {
    /// The name holds one of `< > : " | ? *`.
    Character(char),
    /// The name holds a control character (U+0001 to U+001F).
    Control(char),
    /// The name ends with a dot.
    TrailingDot,
    /// The name ends with a space.
    TrailingSpace,
    /// The name, or its part before the first dot, is a device name (`CON`, `PRN`,
    /// `AUX`, `NUL`, `COM1`-`COM9`, `LPT1`-`LPT9`, `CONIN$`, `CONOUT$`, in any case).
    Device,
}

impl fmt::Display for WindowsRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowsRule::Character(c) => write!(f, "Windows does not allow '{c}' in a name"),
            WindowsRule::Control(c) => write!(
                f,
                "Windows does not allow control characters (here U+{:04X}) in a name",
                *c as u32
            ),
            WindowsRule::TrailingDot => {
                f.write_str("Windows does not allow a name to end with a dot")
            }
            WindowsRule::TrailingSpace => {
                f.write_str("Windows does not allow a name to end with a space")
            }
            WindowsRule::Device => f.write_str("a name Windows reserves for a device"),
        }
    }
}

/// Why a path cannot be stored under Windows naming rules: the first component that
/// breaks one, and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsNameError {
    /// The component (a folder or the file name), as sent.
    pub component: String,
    /// The rule it breaks.
    pub rule: WindowsRule,
}

impl fmt::Display for WindowsNameError {
    /// `"aux.txt": a name Windows reserves for a device`, the name escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\": {}", escape(&self.component), self.rule)
    }
}

impl std::error::Error for WindowsNameError {}

/// Why `path` cannot be stored on Windows, or on a file system with its naming rules
/// (exFAT, NTFS, SMB shares): `None` when every component is a legal Windows name.
/// [`SafePath::parse`] has already refused backslashes, drive prefixes and NUL.
pub fn windows_name_error(path: &SafePath) -> Option<WindowsNameError> {
    path.components().find_map(|c| {
        windows_rule(c).map(|rule| WindowsNameError {
            component: c.to_owned(),
            rule,
        })
    })
}

/// The first Windows naming rule one component breaks.
fn windows_rule(name: &str) -> Option<WindowsRule> {
    if let Some(c) = name.chars().find(|c| ('\u{1}'..='\u{1f}').contains(c)) {
        return Some(WindowsRule::Control(c));
    }
    if let Some(c) = name.chars().find(|c| "<>:\"|?*".contains(*c)) {
        return Some(WindowsRule::Character(c));
    }
    if name.ends_with('.') {
        return Some(WindowsRule::TrailingDot);
    }
    if name.ends_with(' ') {
        return Some(WindowsRule::TrailingSpace);
    }
    // Windows ignores what follows the first dot, and spaces before it: `con.txt`,
    // `aux.tar.gz` and `nul .x` all open the device.
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let upper = stem.to_uppercase();
    let device = match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        _ => ["COM", "LPT"].iter().any(|p| {
            upper.strip_prefix(p).is_some_and(|n| {
                let mut digits = n.chars();
                // Windows counts the superscripts ¹ ² ³ as digits here; COM0 is free.
                matches!(
                    (digits.next(), digits.next()),
                    (Some('1'..='9' | '¹' | '²' | '³'), None)
                )
            })
        }),
    };
    device.then_some(WindowsRule::Device)
}

/// Suffix of partial files.
pub const PARTIAL_SUFFIX: &str = ".p2p-copy-part";

/// The name of the partial file a receiver writes beside `name` until the session
/// commits: `.<name>.p2p-copy-part`, or, when that would exceed 255 bytes, a shortened
/// name with a hash of the full one (`.<prefix>~<hash>.p2p-copy-part`). Names of this form
/// are refused as peer paths, so no entry can collide with another's partial file.
pub fn partial_name(name: &str) -> String {
    let plain = format!(".{name}{PARTIAL_SUFFIX}");
    if plain.len() <= MAX_COMPONENT_LEN {
        return plain;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let mut cut = 200;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        ".{}~{}{PARTIAL_SUFFIX}",
        &name[..cut],
        crate::wire::hex(&digest[..8])
    )
}

impl fmt::Display for SafePath {
    /// Escaped for a terminal (see [`escape`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.0))
    }
}

/// Escape a name for a terminal or log: control characters (C0, DEL, C1), bidi controls
/// and other invisible format characters become `\u{…}`, a backslash becomes `\\`.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for ch in name.chars() {
        let c = ch as u32;
        let unsafe_char = c < 0x20
            || (0x7f..=0x9f).contains(&c)
            || matches!(c, 0x061c | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x2069 | 0xfeff);
        if unsafe_char {
            out.push_str(&format!("\\u{{{c:x}}}"));
        } else if ch == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_relative_paths() {
        for ok in ["a", "dir/a.txt", "ünï/κ/file", "a..b", "...", ".hidden/x"] {
            assert_eq!(SafePath::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_every_escape_form() {
        let cases = [
            ("", PathError::Empty),
            ("../x", PathError::ParentComponent),
            ("a/../../x", PathError::ParentComponent),
            ("a/..", PathError::ParentComponent),
            ("/etc/x", PathError::Absolute),
            ("C:\\x", PathError::WindowsForm),
            ("C:x", PathError::WindowsForm),
            ("\\\\server\\share\\x", PathError::WindowsForm),
            ("a\\..\\x", PathError::WindowsForm),
            ("a//b", PathError::EmptyComponent),
            ("a/./b", PathError::EmptyComponent),
            (".", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("a\0b", PathError::Nul),
        ];
        for (raw, why) in cases {
            assert_eq!(SafePath::parse(raw), Err(why), "{raw:?}");
        }
        assert_eq!(SafePath::parse(&"x".repeat(256)), Err(PathError::TooLong));
        assert_eq!(
            SafePath::parse(&["d"; 200].join("/")),
            Err(PathError::TooLong)
        );
        assert_eq!(SafePath::parse(&"x/".repeat(2100)), Err(PathError::TooLong));
    }

    #[test]
    fn partial_names_are_reserved_and_fit_the_name_limit() {
        assert_eq!(partial_name("x"), ".x.p2p-copy-part");
        assert_eq!(
            SafePath::parse(".x.p2p-copy-part"),
            Err(PathError::Reserved)
        );
        assert_eq!(
            SafePath::parse("d/.x.p2p-copy-part"),
            Err(PathError::Reserved)
        );
        assert!(SafePath::parse("x.p2p-copy-part").is_ok());
        let long = "é".repeat(127);
        let p = partial_name(&long);
        assert!(p.len() <= MAX_COMPONENT_LEN, "{}", p.len());
        assert_eq!(SafePath::parse(&p), Err(PathError::Reserved));
        assert_ne!(
            partial_name(&format!("{long}a")),
            partial_name(&format!("{long}b"))
        );
    }

    #[test]
    fn ancestors_are_prefixes() {
        let p = SafePath::parse("a/b/c").unwrap();
        assert_eq!(p.ancestors().collect::<Vec<_>>(), ["a", "a/b"]);
    }

    fn windows(raw: &str) -> Option<WindowsNameError> {
        windows_name_error(&SafePath::parse(raw).unwrap())
    }

    #[test]
    fn windows_names_refuse_each_rule_naming_the_component() {
        for c in ['<', '>', ':', '"', '|', '?', '*'] {
            let e = windows(&format!("dir/a{c}b.txt")).unwrap();
            assert_eq!(e.component, format!("a{c}b.txt"));
            assert_eq!(e.rule, WindowsRule::Character(c));
        }
        assert_eq!(
            windows("a\x01b").unwrap().rule,
            WindowsRule::Control('\x01')
        );
        assert_eq!(
            windows("x/tab\there").unwrap().rule,
            WindowsRule::Control('\t')
        );
        assert_eq!(windows("dir./x").unwrap().component, "dir.");
        assert_eq!(windows("dir./x").unwrap().rule, WindowsRule::TrailingDot);
        assert_eq!(windows("a/b ").unwrap().rule, WindowsRule::TrailingSpace);
        assert_eq!(windows("a /b").unwrap().component, "a ");
        for device in [
            "CON",
            "con",
            "Prn",
            "aux",
            "NUL",
            "com1",
            "COM9",
            "lpt1",
            "LPT9",
            "con.txt",
            "aux.tar.gz",
            "nul .x",
            "COM\u{b9}",
            "lpt\u{b3}.log",
            "CONIN$",
            "conout$.txt",
        ] {
            let e = windows(&format!("d/{device}")).unwrap();
            assert_eq!(e.rule, WindowsRule::Device, "{device:?}");
            assert_eq!(e.component, device);
        }
        assert_eq!(windows("aux/x.txt").unwrap().component, "aux");
    }

    #[test]
    fn windows_names_accept_legal_names() {
        for ok in [
            "a.b",
            "con-notes.txt",
            "console",
            "COM0",
            "LPT0",
            "COM10",
            "LPT10",
            "auxiliary.c",
            "xcon",
            "nul_",
            ".aux",
            "ünï/κ/файл.txt",
            "日本語",
            "a b",
            ".hidden",
            "a..b",
            "com1x",
            "d/e/f.tar.gz",
        ] {
            assert_eq!(windows(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn windows_name_errors_say_which_component_and_why() {
        assert_eq!(
            windows("logs/aux.txt").unwrap().to_string(),
            "\"aux.txt\": a name Windows reserves for a device"
        );
        assert_eq!(
            windows("bad:name.txt").unwrap().to_string(),
            "\"bad:name.txt\": Windows does not allow ':' in a name"
        );
        assert_eq!(
            windows("a\x1b[31m").unwrap().to_string(),
            "\"a\\u{1b}[31m\": Windows does not allow control characters (here U+001B) in a name"
        );
    }

    #[test]
    fn escape_neutralises_terminal_controls() {
        assert_eq!(escape("a\x1b[31mb"), "a\\u{1b}[31mb");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape("plain ü"), "plain ü");
    }
}
