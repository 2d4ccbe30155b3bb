//! Conditional and range request planning for immutable files (RFC 9110 §13 and §14).
//!
//! This module is pure: it looks at the request method and header fields and decides which
//! answer a GET or HEAD for a static file ("entity") gets. It never performs I/O, so the HTTP
//! layer stays a thin translation of a [`Plan`] into a response.
//!
//! Choices worth knowing about:
//!
//! - HEAD is planned exactly like GET, including `Range`, so a HEAD shows the status and header
//!   fields a GET would (RFC 9110 §9.3.2 asks for the same fields; nginx answers a ranged HEAD
//!   with 206 too). Other methods get preconditions evaluated but never a range.
//! - Header fields that RFC 9110 defines as a single value (dates, `Range`, `If-Range`) are
//!   treated as invalid when they occur on several lines, which means "ignore" for dates and
//!   `Range`, and "does not validate" for `If-Range`.
//! - A malformed `If-Match` or `If-None-Match` line matches nothing: for `If-Match` this fails
//!   closed (412), for `If-None-Match` it simply sends the normal answer.
//! - Ranges are sorted and overlapping or adjacent ones are merged, which RFC 9110 §14.2 allows,
//!   so a client cannot make us send the same bytes many times. More than [`MAX_RANGE_SPECS`]
//!   specs make the whole `Range` field ignored.

use std::cmp::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{
    HeaderName, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{HeaderMap, HeaderValue, Method};

/// Most range specs accepted in one `Range` field; a longer list is ignored (answered with 200).
///
/// Legitimate clients (download managers, boot loaders) ask for one or a handful of ranges; long
/// lists only serve to make the server do a lot of small, expensive work.
pub const MAX_RANGE_SPECS: usize = 64;

/// The file being served.
#[derive(Clone, Copy, Debug)]
pub struct Entity<'a> {
    /// Length of the file in bytes.
    pub len: u64,
    /// Strong entity tag including quotes, e.g. `"\"3a7bd3e2...\""` (the content sha256).
    ///
    /// If this is not a valid strong entity tag, no request tag ever matches it (only `*` does).
    pub etag: &'a str,
    /// Modification time of the file; compared with HTTP dates in whole seconds.
    pub last_modified: SystemTime,
}

/// A satisfiable byte range, inclusive start, exclusive end (end > start, end <= len).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// Offset of the first byte of the range.
    pub start: u64,
    /// Offset one past the last byte of the range.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    #[must_use]
    pub const fn len(&self) -> u64 {
        // Saturating because the fields are public and could be set inconsistently.
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no bytes; never true for ranges produced by [`plan`].
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `Content-Range` value for this range of an entity of `total` bytes: `bytes S-E/TOTAL`,
    /// where `E` is the inclusive last byte offset.
    #[must_use]
    pub fn content_range(&self, total: u64) -> String {
        let first = self.start;
        let last = self.end.saturating_sub(1);
        format!("bytes {first}-{last}/{total}")
    }
}

/// How a GET or HEAD for an [`Entity`] is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// 200 with the whole entity.
    Full,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
    /// 206 with one range.
    Single(ByteRange),
    /// 206 multipart/byteranges with several ranges (sorted, coalesced).
    Multi(Vec<ByteRange>),
}

/// Decides the answer from the request method and headers.
///
/// Preconditions are evaluated in the order of RFC 9110 §13.2.2, then `Range` (with `If-Range`)
/// for GET and HEAD. See the module documentation for the choices made where the RFC leaves room.
#[must_use]
pub fn plan(method: &Method, headers: &HeaderMap, entity: &Entity<'_>) -> Plan {
    let safe = *method == Method::GET || *method == Method::HEAD;
    let own_tag = EntityTag::parse_single(entity.etag.as_bytes());

    // Step 1 and 2: the client wants the representation it knows about, or nothing.
    if headers.contains_key(IF_MATCH) {
        let matched =
            any_tag_matches(headers, &IF_MATCH, |tag| own_tag.is_some_and(|own| tag.strong_eq(own)));
        if !matched {
            return Plan::PreconditionFailed;
        }
    } else if let Some(date) = single_date(headers, &IF_UNMODIFIED_SINCE)
        && unix_seconds(entity.last_modified) > unix_seconds(date)
    {
        return Plan::PreconditionFailed;
    }

    // Step 3 and 4: the client already has a copy and wants to know whether it is current.
    if headers.contains_key(IF_NONE_MATCH) {
        let matched =
            any_tag_matches(headers, &IF_NONE_MATCH, |tag| own_tag.is_some_and(|own| tag.weak_eq(own)));
        if matched {
            return if safe { Plan::NotModified } else { Plan::PreconditionFailed };
        }
    } else if safe {
        // If-Modified-Since only counts when there is no If-None-Match (RFC 9110 §13.1.3).
        if let Some(date) = single_date(headers, &IF_MODIFIED_SINCE)
            && unix_seconds(entity.last_modified) <= unix_seconds(date)
        {
            return Plan::NotModified;
        }
    }

    // Step 5: range handling is only defined for GET; HEAD follows GET (see module docs).
    if safe { plan_range(headers, entity, own_tag) } else { Plan::Full }
}

/// Plans the answer to a request whose preconditions passed, looking at `Range` and `If-Range`.
fn plan_range(headers: &HeaderMap, entity: &Entity<'_>, own_tag: Option<EntityTag<'_>>) -> Plan {
    let Some(range) = single_value(headers, &RANGE) else {
        return Plan::Full;
    };
    // If-Range is checked before the range itself: when the client's copy is stale, it wants the
    // whole new entity, even if its ranges would not be satisfiable.
    if headers.contains_key(IF_RANGE) && !if_range_validates(headers, entity, own_tag) {
        return Plan::Full;
    }
    let Some(specs) = parse_range(range.as_bytes()) else {
        return Plan::Full;
    };

    let mut ranges: Vec<ByteRange> = specs.iter().filter_map(|spec| spec.resolve(entity.len)).collect();
    if ranges.is_empty() {
        return Plan::Unsatisfiable;
    }
    ranges.sort_unstable_by_key(|range| range.start);
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            // `end` is exclusive, so `start == end` means adjacent: merging those too avoids
            // needless multipart overhead.
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    match merged.as_slice() {
        [only] => Plan::Single(*only),
        _ => Plan::Multi(merged),
    }
}

/// Whether `If-Range` allows the range to be applied (RFC 9110 §13.1.5).
fn if_range_validates(headers: &HeaderMap, entity: &Entity<'_>, own_tag: Option<EntityTag<'_>>) -> bool {
    let Some(value) = single_value(headers, &IF_RANGE) else {
        return false;
    };
    let value = value.as_bytes().trim_ascii();
    // An entity tag always starts with a quote or `W/`; an HTTP-date never does.
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        return match (EntityTag::parse_single(value), own_tag) {
            (Some(tag), Some(own)) => tag.strong_eq(own),
            _ => false,
        };
    }
    // Simplification: an equal date is taken as a strong validator, without the "at least one
    // second older than Date" test RFC 9110 §8.8.2.2 asks for. Our files are immutable and
    // content-addressed, so a date change always comes with a content change anyway.
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| httpdate::parse_http_date(text).ok())
        .is_some_and(|date| unix_seconds(date) == unix_seconds(entity.last_modified))
}

/// The only value of a header field, or `None` if it is absent or occurs more than once.
fn single_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    Some(first)
}

/// The HTTP-date in a header field, or `None` if absent, repeated or not a valid HTTP-date
/// (RFC 9110 asks to ignore invalid dates in conditional header fields).
fn single_date(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let text = single_value(headers, name)?.to_str().ok()?;
    httpdate::parse_http_date(text.trim_ascii()).ok()
}

/// Whole seconds since the Unix epoch, rounded down, so that sub-second modification times
/// compare correctly with HTTP dates, which only carry whole seconds.
fn unix_seconds(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::from(after.as_secs()),
        Err(before) => {
            let before = before.duration();
            let seconds = -i128::from(before.as_secs());
            if before.subsec_nanos() > 0 { seconds - 1 } else { seconds }
        }
    }
}

/// An entity tag as found in a header field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntityTag<'a> {
    /// Whether the tag had the `W/` prefix.
    weak: bool,
    /// The opaque tag, including its quotes.
    opaque: &'a [u8],
}

impl<'a> EntityTag<'a> {
    /// Parses one entity tag at the start of `input`, returning it and the bytes after it.
    fn parse_prefix(input: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let (weak, quoted) = match input.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let inner = quoted.strip_prefix(b"\"")?;
        let close = inner.iter().position(|&byte| byte == b'"')?;
        let (chars, after) = inner.split_at(close);
        if !chars.iter().all(|&byte| is_etagc(byte)) {
            return None;
        }
        // Both quotes belong to the opaque tag: `close` chars plus two quotes.
        let opaque = quoted.get(..close + 2)?;
        let rest = after.get(1..)?;
        Some((Self { weak, opaque }, rest))
    }

    /// Parses a value that must be exactly one entity tag (surrounding whitespace allowed).
    fn parse_single(input: &'a [u8]) -> Option<Self> {
        let (tag, rest) = Self::parse_prefix(input.trim_ascii())?;
        rest.is_empty().then_some(tag)
    }

    /// Strong comparison (RFC 9110 §8.8.3.2): both strong and the same opaque tag.
    fn strong_eq(self, other: Self) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison (RFC 9110 §8.8.3.2): the same opaque tag, whatever the `W/` prefixes.
    fn weak_eq(self, other: Self) -> bool {
        self.opaque == other.opaque
    }
}

/// Whether `byte` may appear between the quotes of an entity tag (`etagc` in RFC 9110 §8.8.3).
const fn is_etagc(byte: u8) -> bool {
    matches!(byte, 0x21 | 0x23..=0x7E | 0x80..=0xFF)
}

/// Whether any line of an `If-Match`/`If-None-Match` field is `*` or lists a tag accepted by
/// `accepts`. A line with a syntax error matches nothing, even if it lists an accepted tag before
/// the error, because a half-parsed list is not something the client meant.
fn any_tag_matches(headers: &HeaderMap, name: &HeaderName, accepts: impl Fn(EntityTag<'_>) -> bool) -> bool {
    headers.get_all(name).iter().any(|value| line_matches(value.as_bytes(), &accepts))
}

/// See [`any_tag_matches`]; handles one field line.
fn line_matches(line: &[u8], accepts: &impl Fn(EntityTag<'_>) -> bool) -> bool {
    if line.trim_ascii() == b"*" {
        return true;
    }
    let mut matched = false;
    let mut rest = line;
    loop {
        // Skipping commas here also skips empty list elements, which RFC 9110 §5.6.1 allows.
        rest = rest.trim_ascii_start();
        while let Some(after_comma) = rest.strip_prefix(b",") {
            rest = after_comma.trim_ascii_start();
        }
        if rest.is_empty() {
            return matched;
        }
        let Some((tag, after)) = EntityTag::parse_prefix(rest) else {
            return false;
        };
        matched |= accepts(tag);
        rest = after.trim_ascii_start();
        if !rest.is_empty() && !rest.starts_with(b",") {
            return false;
        }
    }
}

/// One `range-spec` of a `bytes` range set (RFC 9110 §14.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeSpec {
    /// `first-last`, both inclusive, `first <= last`.
    FromTo(u64, u64),
    /// `first-`: from `first` to the end.
    From(u64),
    /// `-length`: the last `length` bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// The bytes this spec selects in an entity of `len` bytes, or `None` if unsatisfiable.
    fn resolve(self, len: u64) -> Option<ByteRange> {
        match self {
            Self::FromTo(first, last) => {
                // `first < len` implies `len >= 1`, so `len - 1` and `+ 1` cannot overflow.
                (first < len).then(|| ByteRange { start: first, end: last.min(len - 1) + 1 })
            }
            Self::From(first) => (first < len).then_some(ByteRange { start: first, end: len }),
            // RFC 9110 calls a non-zero suffix of an empty entity satisfiable, but it selects no
            // bytes, and a ByteRange is never empty, so we answer 416 like for any range there.
            Self::Suffix(length) => {
                (length > 0 && len > 0).then(|| ByteRange { start: len - length.min(len), end: len })
            }
        }
    }
}

/// Parses a `Range` value. `None` means "ignore the field": another unit, a syntax error, or
/// more than [`MAX_RANGE_SPECS`] specs.
fn parse_range(value: &[u8]) -> Option<Vec<RangeSpec>> {
    let text = std::str::from_utf8(value).ok()?.trim_ascii();
    let (unit, set) = text.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for element in set.split(',') {
        let element = element.trim_ascii();
        // Empty list elements are allowed (RFC 9110 §5.6.1) and carry nothing.
        if element.is_empty() {
            continue;
        }
        if specs.len() == MAX_RANGE_SPECS {
            return None;
        }
        specs.push(parse_range_spec(element)?);
    }
    // `1#range-spec`: at least one spec is required.
    if specs.is_empty() { None } else { Some(specs) }
}

/// Parses one `range-spec`; `None` on a syntax error, including `first > last`.
fn parse_range_spec(element: &str) -> Option<RangeSpec> {
    let (first, last) = element.split_once('-')?;
    if first.is_empty() {
        return is_digits(last).then(|| RangeSpec::Suffix(parse_saturating(last)));
    }
    if !is_digits(first) {
        return None;
    }
    if last.is_empty() {
        return Some(RangeSpec::From(parse_saturating(first)));
    }
    // Compared as digit strings so numbers too big for u64 still get the right answer.
    if !is_digits(last) || compare_digits(first, last) == Ordering::Greater {
        return None;
    }
    Some(RangeSpec::FromTo(parse_saturating(first), parse_saturating(last)))
}

/// Whether `text` is `1*DIGIT`.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// Parses ASCII digits, saturating at `u64::MAX`: every position that large lies beyond any
/// entity, so saturating gives the same plan as exact arithmetic would.
fn parse_saturating(digits: &str) -> u64 {
    digits.bytes().fold(0_u64, |value, byte| value.saturating_mul(10).saturating_add(u64::from(byte - b'0')))
}

/// Compares two non-empty ASCII digit strings as numbers of any size.
fn compare_digits(left: &str, right: &str) -> Ordering {
    let left = left.trim_start_matches('0');
    let right = right.trim_start_matches('0');
    left.len().cmp(&right.len()).then_with(|| left.cmp(right))
}

/// Framing of a `multipart/byteranges` body (RFC 9110 §14.6).
///
/// The body is, for ranges `r1..rn`: `part_header(r1, true)`, the bytes of `r1`,
/// `part_header(r2, false)`, the bytes of `r2`, ..., then `trailer()`. The first part header
/// starts directly with the delimiter (no leading CRLF); every later one starts with the CRLF that
/// ends the previous part's data. [`Multipart::body_len`] counts exactly that layout.
#[derive(Clone, Copy, Debug)]
pub struct Multipart<'a> {
    /// Boundary string chosen per response (caller passes something unique, e.g. derived from
    /// the etag and a counter); it must not occur in the data, and be a valid RFC 2046 boundary.
    pub boundary: &'a str,
    /// `Content-Type` of the entity, repeated in every part.
    pub content_type: &'a str,
    /// Length of the whole entity, shown in every part's `Content-Range`.
    pub total: u64,
}

impl Multipart<'_> {
    /// The `Content-Type` of the whole response: `multipart/byteranges; boundary=B`.
    #[must_use]
    pub fn response_content_type(&self) -> String {
        let boundary = self.boundary;
        format!("multipart/byteranges; boundary={boundary}")
    }

    /// Header block written before the part for `range`:
    /// `"\r\n--B\r\nContent-Type: T\r\nContent-Range: bytes s-e/total\r\n\r\n"`. For the
    /// first part (`first == true`) the leading CRLF is left out.
    #[must_use]
    pub fn part_header(&self, range: &ByteRange, first: bool) -> String {
        let lead = if first { "" } else { "\r\n" };
        let boundary = self.boundary;
        let content_type = self.content_type;
        let content_range = range.content_range(self.total);
        format!(
            "{lead}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: {content_range}\r\n\r\n"
        )
    }

    /// The closing delimiter `"\r\n--B--\r\n"`.
    #[must_use]
    pub fn trailer(&self) -> String {
        let boundary = self.boundary;
        format!("\r\n--{boundary}--\r\n")
    }

    /// Exact Content-Length of the whole multipart body for these ranges, in the layout described
    /// on [`Multipart`]. Saturates at `u64::MAX` instead of overflowing.
    #[must_use]
    pub fn body_len(&self, ranges: &[ByteRange]) -> u64 {
        // Built from the very strings that are sent, so the two can never disagree.
        let framing = |text: String| u64::try_from(text.len()).unwrap_or(u64::MAX);
        let parts = ranges.iter().enumerate().fold(0_u64, |total, (index, range)| {
            total.saturating_add(framing(self.part_header(range, index == 0))).saturating_add(range.len())
        });
        parts.saturating_add(framing(self.trailer()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::header::CONTENT_TYPE;
    use proptest::prelude::*;

    use super::*;

    const ETAG: &str = "\"abc\"";

    /// 2001-09-09T01:46:40.5Z: the half second checks that dates compare in whole seconds.
    fn modified() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_000_000_000_500)
    }

    fn http_date(seconds_from_modified: i64) -> String {
        let base = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let time = if seconds_from_modified >= 0 {
            base + Duration::from_secs(seconds_from_modified.unsigned_abs())
        } else {
            base - Duration::from_secs(seconds_from_modified.unsigned_abs())
        };
        httpdate::fmt_http_date(time)
    }

    fn entity(len: u64) -> Entity<'static> {
        Entity { len, etag: ETAG, last_modified: modified() }
    }

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).expect("test header value"));
        }
        map
    }

    fn get(pairs: &[(HeaderName, &str)]) -> Plan {
        plan(&Method::GET, &headers(pairs), &entity(10))
    }

    fn range(value: &str) -> Plan {
        get(&[(RANGE, value)])
    }

    const fn br(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn no_conditions_is_full() {
        assert_eq!(get(&[]), Plan::Full);
        assert_eq!(plan(&Method::HEAD, &HeaderMap::new(), &entity(10)), Plan::Full);
    }

    #[test]
    fn if_match() {
        assert_eq!(get(&[(IF_MATCH, "\"other\"")]), Plan::PreconditionFailed);
        assert_eq!(get(&[(IF_MATCH, "*")]), Plan::Full);
        assert_eq!(get(&[(IF_MATCH, "\"x\", \"abc\"")]), Plan::Full);
        assert_eq!(get(&[(IF_MATCH, "\"x\""), (IF_MATCH, "\"abc\"")]), Plan::Full);
        // Weak tags never strong-match, even with the same opaque tag.
        assert_eq!(get(&[(IF_MATCH, "W/\"abc\"")]), Plan::PreconditionFailed);
        // Malformed lists fail closed.
        assert_eq!(get(&[(IF_MATCH, "abc")]), Plan::PreconditionFailed);
        assert_eq!(get(&[(IF_MATCH, "\"abc\" junk")]), Plan::PreconditionFailed);
        assert_eq!(get(&[(IF_MATCH, "")]), Plan::PreconditionFailed);
    }

    #[test]
    fn if_match_with_invalid_own_etag_only_matches_star() {
        let odd = Entity { len: 10, etag: "abc", last_modified: modified() };
        let plan_with = |value| plan(&Method::GET, &headers(&[(IF_MATCH, value)]), &odd);
        assert_eq!(plan_with("\"abc\""), Plan::PreconditionFailed);
        assert_eq!(plan_with("*"), Plan::Full);
    }

    #[test]
    fn if_unmodified_since() {
        assert_eq!(get(&[(IF_UNMODIFIED_SINCE, &http_date(-1))]), Plan::PreconditionFailed);
        // Equal in whole seconds despite the extra half second of the file.
        assert_eq!(get(&[(IF_UNMODIFIED_SINCE, &http_date(0))]), Plan::Full);
        assert_eq!(get(&[(IF_UNMODIFIED_SINCE, &http_date(60))]), Plan::Full);
        assert_eq!(get(&[(IF_UNMODIFIED_SINCE, "yesterday")]), Plan::Full);
        // Ignored when If-Match is present.
        assert_eq!(get(&[(IF_MATCH, ETAG), (IF_UNMODIFIED_SINCE, &http_date(-1))]), Plan::Full);
    }

    #[test]
    fn if_none_match() {
        assert_eq!(get(&[(IF_NONE_MATCH, "\"x\", \"abc\", \"y\"")]), Plan::NotModified);
        assert_eq!(get(&[(IF_NONE_MATCH, "W/\"abc\"")]), Plan::NotModified);
        assert_eq!(get(&[(IF_NONE_MATCH, "*")]), Plan::NotModified);
        assert_eq!(get(&[(IF_NONE_MATCH, "\"x\""), (IF_NONE_MATCH, ETAG)]), Plan::NotModified);
        assert_eq!(get(&[(IF_NONE_MATCH, ",, \"abc\" ,")]), Plan::NotModified);
        assert_eq!(get(&[(IF_NONE_MATCH, "\"other\"")]), Plan::Full);
        assert_eq!(get(&[(IF_NONE_MATCH, "\"abc\" junk")]), Plan::Full);
        let head = plan(&Method::HEAD, &headers(&[(IF_NONE_MATCH, ETAG)]), &entity(10));
        assert_eq!(head, Plan::NotModified);
        let post = plan(&Method::POST, &headers(&[(IF_NONE_MATCH, ETAG)]), &entity(10));
        assert_eq!(post, Plan::PreconditionFailed);
    }

    #[test]
    fn if_match_is_checked_before_if_none_match() {
        assert_eq!(get(&[(IF_MATCH, "\"other\""), (IF_NONE_MATCH, ETAG)]), Plan::PreconditionFailed);
    }

    #[test]
    fn if_modified_since() {
        assert_eq!(get(&[(IF_MODIFIED_SINCE, &http_date(0))]), Plan::NotModified);
        assert_eq!(get(&[(IF_MODIFIED_SINCE, &http_date(5))]), Plan::NotModified);
        assert_eq!(get(&[(IF_MODIFIED_SINCE, &http_date(-1))]), Plan::Full);
        assert_eq!(get(&[(IF_MODIFIED_SINCE, "not a date")]), Plan::Full);
        // Two values make the field invalid, hence ignored.
        assert_eq!(
            get(&[(IF_MODIFIED_SINCE, &http_date(0)), (IF_MODIFIED_SINCE, &http_date(0))]),
            Plan::Full
        );
        // Ignored when If-None-Match is present, and for methods other than GET/HEAD.
        assert_eq!(get(&[(IF_NONE_MATCH, "\"other\""), (IF_MODIFIED_SINCE, &http_date(5))]), Plan::Full);
        let post = plan(&Method::POST, &headers(&[(IF_MODIFIED_SINCE, &http_date(5))]), &entity(10));
        assert_eq!(post, Plan::Full);
    }

    #[test]
    fn obsolete_date_formats_are_accepted() {
        assert_eq!(get(&[(IF_MODIFIED_SINCE, "Sunday, 09-Sep-01 01:46:40 GMT")]), Plan::NotModified);
        assert_eq!(get(&[(IF_MODIFIED_SINCE, "Sun Sep  9 01:46:40 2001")]), Plan::NotModified);
    }

    #[test]
    fn if_range() {
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_RANGE, "\"old\"")]), Plan::Full);
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_RANGE, ETAG)]), Plan::Single(br(0, 2)));
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_RANGE, "W/\"abc\"")]), Plan::Full);
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_RANGE, &http_date(0))]), Plan::Single(br(0, 2)));
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_RANGE, &http_date(-1))]), Plan::Full);
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_RANGE, &http_date(1))]), Plan::Full);
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_RANGE, "garbage")]), Plan::Full);
        // A stale copy gets the whole entity even when its range would be unsatisfiable.
        assert_eq!(get(&[(RANGE, "bytes=50-"), (IF_RANGE, "\"old\"")]), Plan::Full);
        // Without Range, If-Range means nothing.
        assert_eq!(get(&[(IF_RANGE, "\"old\"")]), Plan::Full);
    }

    #[test]
    fn single_ranges() {
        assert_eq!(range("bytes=0-0"), Plan::Single(br(0, 1)));
        assert_eq!(range("bytes=-1"), Plan::Single(br(9, 10)));
        assert_eq!(range("bytes=-100"), Plan::Single(br(0, 10)));
        assert_eq!(range("bytes=5-"), Plan::Single(br(5, 10)));
        assert_eq!(range("bytes=9-100"), Plan::Single(br(9, 10)));
        assert_eq!(range("bytes=0-99999999999999999999999999"), Plan::Single(br(0, 10)));
        assert_eq!(range("BYTES=1-2"), Plan::Single(br(1, 3)));
        assert_eq!(range("bytes=0-1,20-30"), Plan::Single(br(0, 2)));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(range("bytes=10-"), Plan::Unsatisfiable);
        assert_eq!(range("bytes=10-20"), Plan::Unsatisfiable);
        assert_eq!(range("bytes=-0"), Plan::Unsatisfiable);
        assert_eq!(range("bytes=99999999999999999999999999-"), Plan::Unsatisfiable);
        let empty = Entity { len: 0, ..entity(0) };
        for value in ["bytes=0-", "bytes=0-0", "bytes=-5", "bytes=-0"] {
            let answer = plan(&Method::GET, &headers(&[(RANGE, value)]), &empty);
            assert_eq!(answer, Plan::Unsatisfiable, "{value}");
        }
    }

    #[test]
    fn multiple_ranges() {
        assert_eq!(range("bytes=0-1,5-6"), Plan::Multi(vec![br(0, 2), br(5, 7)]));
        assert_eq!(range("bytes=0-1 , 5-6"), Plan::Multi(vec![br(0, 2), br(5, 7)]));
        assert_eq!(range("bytes=5-6,0-1"), Plan::Multi(vec![br(0, 2), br(5, 7)]));
        assert_eq!(range("bytes=0-1,,-1"), Plan::Multi(vec![br(0, 2), br(9, 10)]));
        assert_eq!(range("bytes=0-5,3-8"), Plan::Single(br(0, 9)));
        assert_eq!(range("bytes=0-1,2-3"), Plan::Single(br(0, 4)));
        assert_eq!(range("bytes=0-0,0-0,0-0"), Plan::Single(br(0, 1)));
        assert_eq!(range("bytes=0-1,4-5,1-4"), Plan::Single(br(0, 6)));
    }

    #[test]
    fn ignored_ranges() {
        for value in [
            "items=0-1",
            "bytes=5-1",
            "bytes=99999999999999999999999999-1",
            "bytes=",
            "bytes=,",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes 0-1",
            "bytes=0-1,5-1",
            "=0-1",
        ] {
            assert_eq!(range(value), Plan::Full, "{value}");
        }
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (RANGE, "bytes=2-3")]), Plan::Full);
    }

    #[test]
    fn range_count_cap() {
        let specs =
            |count: u64| (0..count).map(|i| format!("{}-{}", i * 2, i * 2)).collect::<Vec<_>>().join(",");
        let big = Entity { len: 1000, ..entity(1000) };
        let at_cap = plan(&Method::GET, &headers(&[(RANGE, &format!("bytes={}", specs(64)))]), &big);
        assert!(matches!(at_cap, Plan::Multi(ref ranges) if ranges.len() == 64));
        let over_cap = plan(&Method::GET, &headers(&[(RANGE, &format!("bytes={}", specs(65)))]), &big);
        assert_eq!(over_cap, Plan::Full);
    }

    #[test]
    fn ranges_by_method() {
        let ranged = headers(&[(RANGE, "bytes=0-1")]);
        assert_eq!(plan(&Method::HEAD, &ranged, &entity(10)), Plan::Single(br(0, 2)));
        assert_eq!(plan(&Method::POST, &ranged, &entity(10)), Plan::Full);
    }

    #[test]
    fn preconditions_come_before_ranges() {
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_NONE_MATCH, ETAG)]), Plan::NotModified);
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_MATCH, "\"x\"")]), Plan::PreconditionFailed);
        assert_eq!(get(&[(RANGE, "bytes=0-1"), (IF_MATCH, ETAG)]), Plan::Single(br(0, 2)));
    }

    #[test]
    fn non_utf8_header_values_do_not_panic() {
        let garbage =
            HeaderValue::from_bytes(b"bytes=\xff-\xfe, \"\xc3\x28\" W/\x80").expect("obs-text value");
        for name in
            [IF_MATCH, IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_UNMODIFIED_SINCE, IF_RANGE, RANGE, CONTENT_TYPE]
        {
            let mut map = HeaderMap::new();
            map.insert(RANGE, HeaderValue::from_static("bytes=0-1"));
            map.append(name.clone(), garbage.clone());
            let _ = plan(&Method::GET, &map, &entity(10));
        }
        let mut map = HeaderMap::new();
        map.insert(RANGE, garbage);
        assert_eq!(plan(&Method::GET, &map, &entity(10)), Plan::Full);
        // obs-text is allowed inside an entity tag, so this is a well-formed, non-matching tag.
        let mut map = HeaderMap::new();
        map.insert(IF_MATCH, HeaderValue::from_bytes(b"\"\xff\"").expect("obs-text value"));
        assert_eq!(plan(&Method::GET, &map, &entity(10)), Plan::PreconditionFailed);
    }

    #[test]
    fn byte_range_helpers() {
        assert_eq!(br(0, 1).len(), 1);
        assert!(!br(0, 1).is_empty());
        assert!(br(3, 3).is_empty());
        assert_eq!(br(0, 10).content_range(10), "bytes 0-9/10");
        assert_eq!(br(9, 10).content_range(10), "bytes 9-9/10");
    }

    #[test]
    fn multipart_layout_and_length() {
        let data: Vec<u8> = (0..100_u8).collect();
        let multipart =
            Multipart { boundary: "b0undary", content_type: "application/octet-stream", total: 100 };
        let ranges = [br(0, 3), br(10, 20), br(99, 100)];
        let mut body = Vec::new();
        for (index, range) in ranges.iter().enumerate() {
            body.extend_from_slice(multipart.part_header(range, index == 0).as_bytes());
            let start = usize::try_from(range.start).expect("small");
            let end = usize::try_from(range.end).expect("small");
            body.extend_from_slice(&data[start..end]);
        }
        body.extend_from_slice(multipart.trailer().as_bytes());
        assert_eq!(multipart.body_len(&ranges), u64::try_from(body.len()).expect("small"));

        let expected_start =
            "--b0undary\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-2/100\r\n\r\n";
        assert!(body.starts_with(expected_start.as_bytes()));
        assert_eq!(
            multipart.part_header(&br(10, 20), false),
            concat!(
                "\r\n--b0undary\r\nContent-Type: application/octet-stream\r\n",
                "Content-Range: bytes 10-19/100\r\n\r\n",
            )
        );
        assert!(body.ends_with(b"\x63\r\n--b0undary--\r\n"));
        assert_eq!(multipart.response_content_type(), "multipart/byteranges; boundary=b0undary");
    }

    /// Range values: arbitrary printable text, near-misses of the syntax, and well-formed lists.
    fn range_value() -> impl Strategy<Value = String> {
        let spec =
            (proptest::option::of(0_u64..300), proptest::option::of(0_u64..300)).prop_map(|(first, last)| {
                let show = |pos: Option<u64>| pos.map(|value| value.to_string()).unwrap_or_default();
                format!("{}-{}", show(first), show(last))
            });
        prop_oneof![
            "[ -~]{0,60}",
            "(bytes|BYTES|items)?=?[0-9, \\-]{0,60}",
            proptest::collection::vec(spec, 1..70).prop_map(|specs| format!("bytes={}", specs.join(","))),
        ]
    }

    proptest! {
        #[test]
        fn plan_never_panics_and_ranges_fit(
            len in prop_oneof![0_u64..300, any::<u64>()],
            value in range_value(),
            head in any::<bool>(),
        ) {
            let Ok(value) = HeaderValue::from_str(&value) else {
                return Ok(());
            };
            let mut map = HeaderMap::new();
            map.insert(RANGE, value);
            let method = if head { Method::HEAD } else { Method::GET };
            let entity = Entity { len, etag: ETAG, last_modified: modified() };
            match plan(&method, &map, &entity) {
                Plan::Single(range) => prop_assert!(range.start < range.end && range.end <= len),
                Plan::Multi(ranges) => {
                    prop_assert!(ranges.len() >= 2);
                    for range in &ranges {
                        prop_assert!(range.start < range.end && range.end <= len);
                    }
                    // Sorted, and neither overlapping nor adjacent after coalescing.
                    for pair in ranges.windows(2) {
                        prop_assert!(pair[0].end < pair[1].start);
                    }
                }
                Plan::Full | Plan::Unsatisfiable => {}
                other => prop_assert!(false, "unexpected plan {other:?}"),
            }
        }
    }
}
