//! How the targets read what Bootfleet renders: iPXE scripts, Linux kernel
//! command lines and GRUB's `linux` line, each modelled on its parser's
//! source (named per function). They are the oracle of the template tests:
//! a rendering is safe when these parsers find exactly the commands and
//! arguments the template meant. Pure; nothing here runs on a boot path.

/// One iPXE command: its words before `${…}` expansion, and the separator
/// (`||`, `&&` or `;`) that links it to the next command on its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpxeCommand {
    /// The words, the command's name first.
    pub words: Vec<String>,
    /// The separator after it, if any.
    pub then: Option<String>,
}

/// One line of an iPXE script as iPXE executes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpxeLine {
    /// Its label (`:name`), if any.
    pub label: Option<String>,
    /// Its commands (none for a comment or a label alone).
    pub commands: Vec<IpxeCommand>,
}

/// iPXE's whitespace (its `isspace`: ASCII only).
fn ipxe_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// The lines of an iPXE script that hold a label or a command, as
/// `process_script` (`src/image/script.c`) and `system` with
/// `command_terminator` (`src/core/exec.c`) read them: lines end at `\n`,
/// a trailing `\r` is dropped, a trailing `\` joins the next line; a first
/// word starting with `:` is a label; words are split at whitespace, with
/// no quoting; a word starting with `#` ends the line; `||`, `&&` and `;`
/// separate commands.
pub fn ipxe_script(script: &str) -> Vec<IpxeLine> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    for raw in script.split('\n') {
        pending.push_str(raw.strip_suffix('\r').unwrap_or(raw));
        if pending.ends_with('\\') {
            pending.pop();
            continue;
        }
        let line = std::mem::take(&mut pending);
        let mut command = line.trim_start_matches(ipxe_space);
        let mut label = None;
        if let Some(rest) = command.strip_prefix(':') {
            let end = rest.find(ipxe_space).unwrap_or(rest.len());
            label = Some(rest[..end].to_owned());
            command = &rest[end..];
        }
        let commands = ipxe_commands(command);
        if label.is_some() || !commands.is_empty() {
            lines.push(IpxeLine { label, commands });
        }
    }
    lines
}

/// The commands of one line (`src/core/exec.c`).
pub fn ipxe_commands(line: &str) -> Vec<IpxeCommand> {
    let mut commands = Vec::new();
    let mut words = Vec::new();
    for word in line.split(ipxe_space).filter(|w| !w.is_empty()) {
        if word.starts_with('#') {
            break;
        }
        if matches!(word, "||" | "&&" | ";") {
            commands.push(IpxeCommand { words: std::mem::take(&mut words), then: Some(word.to_owned()) });
        } else {
            words.push(word.to_owned());
        }
    }
    if !words.is_empty() {
        commands.push(IpxeCommand { words, then: None });
    }
    commands
}

/// The Linux kernel's whitespace (`lib/ctype.c`: byte 0xA0 too).
fn kernel_space(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0x0b || b == 0xa0
}

/// A kernel command line as Linux's `parse_args` and `next_arg`
/// (`lib/cmdline.c`; `kernel/params.c` in older kernels) split it: each
/// argument as `(param, value)`, quotes removed as `next_arg` removes them;
/// the arguments after `--` (handed to init) are not included.
pub fn kernel_args(cmdline: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let bytes = cmdline.as_bytes();
    let mut args = Vec::new();
    let mut at = 0;
    loop {
        while at < bytes.len() && kernel_space(bytes[at]) {
            at += 1;
        }
        if at >= bytes.len() {
            return args;
        }
        let mut start = at;
        let (mut in_quote, mut quoted) = (false, false);
        if bytes[start] == b'"' {
            start += 1;
            in_quote = true;
            quoted = true;
        }
        let mut i = start;
        let mut equals = None;
        while i < bytes.len() {
            if kernel_space(bytes[i]) && !in_quote {
                break;
            }
            // `next_arg` cannot record an `=` that starts the argument.
            if equals.is_none() && bytes[i] == b'=' && i > start {
                equals = Some(i);
            }
            if bytes[i] == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        let mut end = i;
        // The closing quote goes, whether it closes the argument or the value.
        let strip_last = |end: usize| end > start && bytes[end - 1] == b'"';
        let (param, value) = match equals {
            None => {
                if quoted && strip_last(end) {
                    end -= 1;
                }
                (bytes[start..end].to_vec(), None)
            }
            Some(eq) => {
                let mut value_start = eq + 1;
                if value_start < end && bytes[value_start] == b'"' {
                    value_start += 1;
                    if strip_last(end) {
                        end -= 1;
                    }
                } else if quoted && strip_last(end) {
                    end -= 1;
                }
                (bytes[start..eq].to_vec(), Some(bytes[value_start..end.max(value_start)].to_vec()))
            }
        };
        at = if i < bytes.len() { i + 1 } else { i };
        if value.is_none() && param == b"--" {
            return args;
        }
        args.push((param, value));
    }
}

/// The words of a GRUB command, as GRUB's script lexer reads them, for the
/// subset Bootfleet writes: whitespace separates words; `'…'` is literal;
/// `\` outside quotes makes the next character literal. Anything GRUB would
/// do more with — `$` expansion, `"…"`, the metacharacters
/// `{ } | & ; < >`, a `#` comment — is an error naming it, since a rendered
/// value must never reach it.
pub fn grub_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '\'' => {
                let text = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => text.push(c),
                        None => return Err("unclosed '".into()),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next().ok_or("\\ at the end")?),
            '#' if word.is_none() => return Err("# starts a comment".into()),
            '$' | '"' | '{' | '}' | '|' | '&' | ';' | '<' | '>' | '\n' => {
                return Err(format!("{c:?} is special to GRUB"));
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// The kernel command line GRUB's `linux` builds from its words
/// (`grub_create_loader_cmdline`, recent releases: a word holding a space
/// is wrapped in `"…"`).
pub fn grub_cmdline(words: &[String]) -> String {
    words
        .iter()
        .map(|w| if w.contains(' ') { format!("\"{w}\"") } else { w.clone() })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &IpxeLine) -> Vec<Vec<&str>> {
        line.commands.iter().map(|c| c.words.iter().map(String::as_str).collect()).collect()
    }

    #[test]
    fn ipxe_lines_commands_labels_comments_and_continuations() {
        let lines = ipxe_script(
            "#!ipxe\n\n:start\nkernel http://x/k a=1 #note || b\r\ninitrd x || goto failed && echo\tok ; exit\n\
             echo one \\\n two\n  :failed   echo label and command\n",
        );
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines[0].label.as_deref(), Some("start"));
        assert!(lines[0].commands.is_empty());
        assert_eq!(words(&lines[1]), [vec!["kernel", "http://x/k", "a=1"]]);
        assert_eq!(
            words(&lines[2]),
            [vec!["initrd", "x"], vec!["goto", "failed"], vec!["echo", "ok"], vec!["exit"]]
        );
        let separators: Vec<_> = lines[2].commands.iter().map(|c| c.then.as_deref()).collect();
        assert_eq!(separators, [Some("||"), Some("&&"), Some(";"), None]);
        assert_eq!(words(&lines[3]), [vec!["echo", "one", "two"]]);
        assert_eq!(lines[4].label.as_deref(), Some("failed"));
        assert_eq!(words(&lines[4]), [vec!["echo", "label", "and", "command"]]);
    }

    fn args(cmdline: &str) -> Vec<(String, Option<String>)> {
        kernel_args(cmdline)
            .into_iter()
            .map(|(p, v)| (String::from_utf8(p).unwrap(), v.map(|v| String::from_utf8(v).unwrap())))
            .collect()
    }

    #[test]
    fn kernel_arguments_split_and_unquote_as_linux_does() {
        let p = |p: &str, v: Option<&str>| (p.to_owned(), v.map(str::to_owned));
        assert_eq!(
            args("  console=ttyS0  quiet \"a=b c\" d=\"e f\" g=h\"i j\"k \"l m\" -- init args"),
            [
                p("console", Some("ttyS0")),
                p("quiet", None),
                p("a", Some("b c")),
                p("d", Some("e f")),
                p("g", Some("h\"i j\"k")),
                p("l m", None),
            ]
        );
        // Byte 0xA0 (in "à") is a space to the kernel, unless quoted.
        assert_eq!(kernel_args("x=àb"), [(b"x".to_vec(), Some(vec![0xc3])), (b"b".to_vec(), None)]);
        assert_eq!(kernel_args("\"x=à\"")[0].1.as_deref(), Some("à".as_bytes()));
    }

    #[test]
    fn grub_words_and_the_command_line_it_builds() {
        let w = grub_words("linux (http,h)/k a=b 'c d' e='f $g' h\\ i").unwrap();
        assert_eq!(w, ["linux", "(http,h)/k", "a=b", "c d", "e=f $g", "h i"]);
        assert_eq!(grub_cmdline(&w[2..]), "a=b \"c d\" \"e=f $g\" \"h i\"");
        for bad in ["a $x", "a \"b\"", "a ; b", "#c", "a {"] {
            assert!(grub_words(bad).is_err(), "{bad}");
        }
        assert_eq!(grub_words("a#b").unwrap(), ["a#b"]);
    }
}
