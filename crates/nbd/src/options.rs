//! Option haggling: parsing what a client sends with an option, and the
//! replies that describe an export (`NBD_OPT_INFO`, `NBD_OPT_GO`,
//! `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`). Pure functions.

use crate::wire::{self, MAX_STRING_LEN, be_u16, be_u32, info, transmission};

/// Smallest preferred block size the spec allows ("Size constraints").
const MIN_PREFERRED_BLOCK: u32 = 512;

/// What the server tells a client about an export, and what it checks
/// requests against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Writes, trims and write-zeroes fail with `EPERM`.
    pub read_only: bool,
    /// Several connections may share the export: it has no cache of its
    /// own, or one shared by every connection (`NBD_FLAG_CAN_MULTI_CONN`).
    /// Only the export knows; a per-session write cache must say no.
    pub multi_conn: bool,
    /// `NBD_CMD_TRIM` is supported.
    pub trim: bool,
    /// `NBD_CMD_WRITE_ZEROES` is supported.
    pub write_zeroes: bool,
    /// Requests aligned to this are efficient (a power of two, at least 512).
    pub preferred_block: u32,
    /// Text for humans, shown by `nbdinfo` (empty for none).
    pub description: String,
}

impl ExportInfo {
    /// A read-only export of `size` bytes with nothing cached: the case
    /// where multi-conn is safe.
    pub fn read_only(size: u64) -> Self {
        Self {
            size,
            read_only: true,
            multi_conn: true,
            trim: false,
            write_zeroes: false,
            preferred_block: 4096,
            description: String::new(),
        }
    }

    /// The transmission flags for this export; `structured` says whether
    /// structured replies were negotiated (`NBD_FLAG_SEND_DF` needs them).
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut flags = transmission::HAS_FLAGS | transmission::SEND_FLUSH;
        if self.read_only {
            flags |= transmission::READ_ONLY;
        } else {
            flags |= transmission::SEND_FUA;
            if self.trim {
                flags |= transmission::SEND_TRIM;
            }
            if self.write_zeroes {
                flags |= transmission::SEND_WRITE_ZEROES;
            }
        }
        if self.multi_conn {
            flags |= transmission::CAN_MULTI_CONN;
        }
        if structured {
            flags |= transmission::SEND_DF;
        }
        flags
    }

    /// The preferred block size, forced into what the spec allows: a power
    /// of two between 512 and the maximum payload.
    pub(crate) fn preferred_block(&self, max_payload: u32) -> u32 {
        let preferred = self.preferred_block;
        if preferred.is_power_of_two() && (MIN_PREFERRED_BLOCK..=max_payload).contains(&preferred) {
            preferred
        } else {
            4096.min(max_payload)
        }
    }
}

/// The data of an `NBD_OPT_INFO` or `NBD_OPT_GO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InfoRequest {
    pub(crate) name: String,
    pub(crate) requests: Vec<u16>,
}

/// Parses `NBD_OPT_INFO` / `NBD_OPT_GO` data: name length, name, count,
/// information types. `None` when the lengths disagree or the name is not
/// a valid string.
pub(crate) fn parse_info_request(data: &[u8]) -> Option<InfoRequest> {
    let name_len = usize::try_from(be_u32(data.get(..4)?)).ok()?;
    let name_end = 4usize.checked_add(name_len)?;
    let name = parse_name(data.get(4..name_end)?)?;
    let count = usize::from(be_u16(data.get(name_end..name_end + 2)?));
    let list = data.get(name_end + 2..)?;
    if list.len() != count * 2 {
        return None;
    }
    let requests = list.chunks_exact(2).map(be_u16).collect();
    Some(InfoRequest { name, requests })
}

/// An export name: UTF-8, no NUL, at most 4096 bytes ("Conventions").
pub(crate) fn parse_name(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_STRING_LEN || bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// The `NBD_REP_INFO` replies for `export`, then `NBD_REP_ACK`.
/// `NBD_INFO_EXPORT` and `NBD_INFO_BLOCK_SIZE` always go (the latter
/// unasked is allowed, and shows clients the limits); the name and the
/// description when asked for.
pub(crate) fn encode_info_replies(
    out: &mut Vec<u8>,
    option: u32,
    request: &InfoRequest,
    export: &ExportInfo,
    structured: bool,
    max_payload: u32,
) {
    let mut payload = Vec::with_capacity(12);
    payload.extend_from_slice(&export.size.to_be_bytes());
    payload.extend_from_slice(&export.transmission_flags(structured).to_be_bytes());
    wire::encode_info_reply(out, option, info::EXPORT, &payload);

    payload.clear();
    payload.extend_from_slice(&1u32.to_be_bytes());
    payload.extend_from_slice(&export.preferred_block(max_payload).to_be_bytes());
    payload.extend_from_slice(&max_payload.to_be_bytes());
    wire::encode_info_reply(out, option, info::BLOCK_SIZE, &payload);

    if request.requests.contains(&info::NAME) {
        wire::encode_info_reply(out, option, info::NAME, request.name.as_bytes());
    }
    if request.requests.contains(&info::DESCRIPTION) && !export.description.is_empty() {
        let description = truncate(&export.description);
        wire::encode_info_reply(out, option, info::DESCRIPTION, description.as_bytes());
    }
    wire::encode_option_reply(out, option, wire::reply::ACK, &[]);
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zeroes unless
/// the client asked for none.
pub(crate) fn encode_export_name_reply(out: &mut Vec<u8>, export: &ExportInfo, no_zeroes: bool) {
    out.extend_from_slice(&export.size.to_be_bytes());
    out.extend_from_slice(&export.transmission_flags(false).to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

/// `s` cut to the protocol's string limit on a character boundary.
pub(crate) fn truncate(s: &str) -> &str {
    if s.len() <= MAX_STRING_LEN {
        return s;
    }
    let mut end = MAX_STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_data(name: &[u8], requests: &[u16]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name);
        data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            data.extend_from_slice(&r.to_be_bytes());
        }
        data
    }

    #[test]
    fn info_requests_parse_only_when_their_lengths_agree() {
        let good = info_data(b"disk", &[3, 1]);
        assert_eq!(
            parse_info_request(&good),
            Some(InfoRequest { name: "disk".into(), requests: vec![3, 1] })
        );
        assert!(parse_info_request(&good[..good.len() - 1]).is_none());
        let mut long = good.clone();
        long.push(0);
        assert!(parse_info_request(&long).is_none());
        let mut lying = good;
        lying[3] = 200;
        assert!(parse_info_request(&lying).is_none());
        assert!(parse_info_request(&info_data(b"a\0b", &[])).is_none());
        assert!(parse_info_request(&info_data(&[0xff, 0xfe], &[])).is_none());
        assert!(parse_info_request(&info_data(&[b'x'; 4097], &[])).is_none());
        assert!(parse_info_request(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_none());
        assert_eq!(parse_info_request(&info_data(b"", &[])).unwrap().name, "");
    }

    #[test]
    fn flags_follow_the_export() {
        use transmission::*;
        let ro = ExportInfo::read_only(1);
        assert_eq!(ro.transmission_flags(false), HAS_FLAGS | SEND_FLUSH | READ_ONLY | CAN_MULTI_CONN);
        let rw = ExportInfo { read_only: false, multi_conn: false, trim: true, write_zeroes: true, ..ro };
        assert_eq!(
            rw.transmission_flags(true),
            HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | SEND_DF
        );
    }

    #[test]
    fn preferred_block_is_forced_into_the_allowed_range() {
        let mut export = ExportInfo::read_only(1);
        for (given, expected) in [(65536, 65536), (512, 512), (256, 4096), (3000, 4096), (1 << 26, 4096)] {
            export.preferred_block = given;
            assert_eq!(export.preferred_block(1 << 25), expected, "{given}");
        }
    }

    #[test]
    fn long_descriptions_are_cut_on_a_character_boundary() {
        let s = "é".repeat(3000);
        let cut = truncate(&s);
        assert!(cut.len() <= MAX_STRING_LEN && cut.len() >= MAX_STRING_LEN - 1);
    }
}
