//! Which file a request may name: checked on the text before the file
//! system is touched (the shell then resolves symlinks and checks again).

use std::path::{Component, Path, PathBuf};

use crate::wire::MAX_FILENAME;

/// Why a file name is refused. Messages name the rule, never a server path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Empty, too long, or contains NUL or control characters.
    #[error("bad file name")]
    BadName,
    /// Contains a backslash (a Windows-style path).
    #[error("backslashes are not allowed")]
    Backslash,
    /// Contains `..`.
    #[error("parent directories are not allowed")]
    Parent,
}

/// Turns a requested name into a path relative to the root. A leading `/`
/// is accepted and means the root (PXE ROMs often send one); `.` segments
/// and repeated slashes are dropped.
pub fn relative_path(name: &str) -> Result<PathBuf, PathError> {
    if name.is_empty() || name.len() > MAX_FILENAME || name.chars().any(|c| c == '\0' || c.is_control()) {
        return Err(PathError::BadName);
    }
    if name.contains('\\') {
        return Err(PathError::Backslash);
    }
    let mut out = PathBuf::new();
    for component in Path::new(name.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::Parent),
            Component::RootDir | Component::Prefix(_) => return Err(PathError::BadName),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathError::BadName);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_inside_the_root_pass() {
        assert_eq!(relative_path("pxelinux.0").unwrap(), PathBuf::from("pxelinux.0"));
        assert_eq!(relative_path("/boot//grub/./grub.cfg").unwrap(), PathBuf::from("boot/grub/grub.cfg"));
        for (name, err) in [
            ("../etc/passwd", PathError::Parent),
            ("a/../../b", PathError::Parent),
            ("/..", PathError::Parent),
            ("..\\windows", PathError::Backslash),
            ("C:\\boot", PathError::Backslash),
            ("", PathError::BadName),
            ("/", PathError::BadName),
            ("a\0b", PathError::BadName),
            ("a\nb", PathError::BadName),
        ] {
            assert_eq!(relative_path(name), Err(err), "{name:?}");
        }
        assert_eq!(relative_path(&"a".repeat(256)), Err(PathError::BadName));
    }
}
