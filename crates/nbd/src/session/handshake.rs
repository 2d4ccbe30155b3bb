//! The handshake half of [`Session`]: client flags, options, and the
//! answers to export lookups and lists ("Fixed newstyle negotiation" and
//! "Option types" in the spec).

use super::{CloseReason, Listing, MAX_OPTION_DATA, Output, Purpose, Refusal, Session, State};
use crate::options::{self, ExportInfo, InfoRequest};
use crate::wire::{
    self, CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, OPTION_MAGIC, be_u32, be_u64, option, reply,
};

impl Session {
    pub(super) fn on_client_flags(&mut self, flags: u32, out: &mut Vec<Output>) {
        // Clients that do not set FIXED_NEWSTYLE still get fixed newstyle
        // answers (allowed); unknown flags end the connection (required).
        if flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
            return self.close(CloseReason::Protocol("unknown client flags"), out);
        }
        self.no_zeroes = flags & CLIENT_NO_ZEROES != 0;
        self.state = State::OptionHeader;
    }

    pub(super) fn on_option_header(&mut self, header: &[u8], out: &mut Vec<Output>) {
        if be_u64(&header[0..8]) != OPTION_MAGIC {
            return self.close(CloseReason::Protocol("option without IHAVEOPT"), out);
        }
        self.options_seen += 1;
        if self.options_seen > self.limits.max_options {
            return self.close(CloseReason::TooManyOptions, out);
        }
        let option = be_u32(&header[8..12]);
        let length = be_u32(&header[12..16]);
        let too_long = usize::try_from(length).map_or(true, |len| len > MAX_OPTION_DATA);
        if too_long && option == option::EXPORT_NAME {
            // No error reply exists for EXPORT_NAME: the session must end.
            return self.close(CloseReason::ExportRefused, out);
        }
        let known = matches!(
            option,
            option::EXPORT_NAME
                | option::ABORT
                | option::LIST
                | option::INFO
                | option::GO
                | option::STRUCTURED_REPLY
        );
        let discard_reply = if !known {
            Some(reply::ERR_UNSUP)
        } else if self.shutting_down && option != option::ABORT {
            Some(reply::ERR_SHUTDOWN)
        } else if too_long {
            Some(reply::ERR_TOO_BIG)
        } else {
            None
        };
        match discard_reply {
            Some(reply) if length > 0 => {
                self.state = State::OptionDiscard { option, remaining: u64::from(length), reply };
            }
            Some(reply) => {
                self.state = State::OptionHeader;
                self.option_reply(option, reply, &[], out);
            }
            None if length == 0 => self.on_option(option, &[], out),
            None => self.state = State::OptionData { option, length: length as usize },
        }
    }

    fn option_reply(&self, option: u32, kind: u32, data: &[u8], out: &mut Vec<Output>) {
        let mut bytes = Vec::with_capacity(20 + data.len());
        wire::encode_option_reply(&mut bytes, option, kind, data);
        out.push(Output::Send(bytes));
    }

    pub(super) fn on_option(&mut self, option: u32, data: &[u8], out: &mut Vec<Output>) {
        self.state = State::OptionHeader;
        match option {
            option::EXPORT_NAME => match options::parse_name(data) {
                Some(name) if !self.shutting_down => {
                    let request = InfoRequest { name: name.clone(), requests: Vec::new() };
                    self.state = State::AwaitLookup { option, purpose: Purpose::ExportName, request };
                    out.push(Output::Lookup { name, purpose: Purpose::ExportName });
                }
                _ => self.close(CloseReason::ExportRefused, out),
            },
            option::ABORT => {
                self.option_reply(option, reply::ACK, &[], out);
                self.close(CloseReason::ClientDone, out);
            }
            option::LIST if !data.is_empty() => {
                self.option_reply(option, reply::ERR_INVALID, b"NBD_OPT_LIST takes no data", out);
            }
            option::LIST => {
                self.state = State::AwaitList;
                out.push(Output::List);
            }
            option::INFO | option::GO => match options::parse_info_request(data) {
                Some(request) => {
                    let purpose = if option == option::GO { Purpose::Go } else { Purpose::Info };
                    out.push(Output::Lookup { name: request.name.clone(), purpose });
                    self.state = State::AwaitLookup { option, purpose, request };
                }
                None => self.option_reply(option, reply::ERR_INVALID, b"malformed export request", out),
            },
            option::STRUCTURED_REPLY if !data.is_empty() || self.structured => {
                self.option_reply(option, reply::ERR_INVALID, b"structured replies take no data, once", out);
            }
            option::STRUCTURED_REPLY => {
                self.structured = true;
                self.option_reply(option, reply::ACK, &[], out);
            }
            _ => self.option_reply(option, reply::ERR_UNSUP, &[], out),
        }
    }

    /// The answer to [`Output::Lookup`]. For [`Purpose::Go`] and
    /// [`Purpose::ExportName`], success starts the transmission phase with
    /// `export`: the shell keeps the export it opened for the session.
    pub fn on_lookup(&mut self, result: Result<ExportInfo, Refusal>, out: &mut Vec<Output>) {
        let State::AwaitLookup { option, purpose, request } =
            std::mem::replace(&mut self.state, State::OptionHeader)
        else {
            return;
        };
        let export = match result {
            Ok(export) => export,
            Err(_) if purpose == Purpose::ExportName => return self.close(CloseReason::ExportRefused, out),
            Err(Refusal::Unknown) => {
                return self.option_reply(option, reply::ERR_UNKNOWN, b"no such export", out);
            }
            Err(Refusal::Policy(message)) => {
                let message = options::truncate(&message);
                return self.option_reply(option, reply::ERR_POLICY, message.as_bytes(), out);
            }
            Err(Refusal::Shutdown) => return self.option_reply(option, reply::ERR_SHUTDOWN, &[], out),
        };
        let mut bytes = Vec::new();
        if purpose == Purpose::ExportName {
            options::encode_export_name_reply(&mut bytes, &export, self.no_zeroes);
            // EXPORT_NAME predates structured replies' negotiation order;
            // a client that asked for them still gets them.
        } else {
            options::encode_info_replies(
                &mut bytes,
                option,
                &request,
                &export,
                self.structured,
                self.limits.max_payload,
            );
        }
        out.push(Output::Send(bytes));
        if purpose != Purpose::Info {
            self.export = Some(export);
            self.state = State::RequestHeader;
        }
    }

    /// The answer to [`Output::List`].
    pub fn on_list(&mut self, exports: &[Listing], out: &mut Vec<Output>) {
        if !matches!(self.state, State::AwaitList) {
            return;
        }
        self.state = State::OptionHeader;
        let mut bytes = Vec::new();
        for export in exports.iter().filter(|e| e.name.len() <= wire::MAX_STRING_LEN) {
            let description = options::truncate(&export.description);
            wire::encode_server_reply(&mut bytes, option::LIST, &export.name, description);
        }
        wire::encode_option_reply(&mut bytes, option::LIST, reply::ACK, &[]);
        out.push(Output::Send(bytes));
    }
}
