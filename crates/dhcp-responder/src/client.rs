//! What kind of boot client sent a request: plain DHCP, a PXE ROM, iPXE,
//! or UEFI HTTP boot, and for which firmware architecture.

use crate::wire::{Request, code, sub_options};

/// Firmware architecture (RFC 4578 option 93, IANA "Processor
/// Architecture Types"), as the rules engine names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86 BIOS (0).
    Bios,
    /// x86 UEFI, 32-bit (6; HTTP: 15).
    EfiIa32,
    /// x64 UEFI (7 and 9; HTTP: 16).
    EfiX64,
    /// ARM 32-bit UEFI (10; HTTP: 18).
    EfiArm32,
    /// ARM 64-bit UEFI (11; HTTP: 19).
    EfiArm64,
    /// Anything else, by number.
    Other(u16),
}

impl Arch {
    /// The architecture and whether the code means HTTP boot.
    pub fn from_code(code: u16) -> (Self, bool) {
        match code {
            0 => (Self::Bios, false),
            6 => (Self::EfiIa32, false),
            7 | 9 => (Self::EfiX64, false),
            10 => (Self::EfiArm32, false),
            11 => (Self::EfiArm64, false),
            15 => (Self::EfiIa32, true),
            16 => (Self::EfiX64, true),
            18 => (Self::EfiArm32, true),
            19 => (Self::EfiArm64, true),
            other => (Self::Other(other), false),
        }
    }

    /// The name used in host facts ("bios", "efi-x64", …).
    pub fn name(self) -> String {
        match self {
            Self::Bios => "bios".into(),
            Self::EfiIa32 => "efi-ia32".into(),
            Self::EfiX64 => "efi-x64".into(),
            Self::EfiArm32 => "efi-arm32".into(),
            Self::EfiArm64 => "efi-arm64".into(),
            Self::Other(n) => format!("arch-{n}"),
        }
    }
}

/// How the client will fetch what it is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    /// A DHCP client that is not network-booting: not ours to answer.
    None,
    /// A PXE ROM: wants a loader over TFTP.
    Pxe,
    /// UEFI HTTP boot: wants a URL, and an answer that echoes HTTPClient.
    Http,
    /// iPXE already running: wants its boot script URL, not the loader
    /// again (that would loop).
    Ipxe,
}

/// What the request says about the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The loader stage.
    pub loader: Loader,
    /// Architecture, from option 93 or else the PXEClient vendor class.
    pub arch: Option<Arch>,
    /// All architectures option 93 lists (firmware may send several).
    pub arch_codes: Vec<u16>,
}

/// `PXEClient:Arch:00007:UNDI:003016` → 7.
fn arch_from_vendor_class(class: &str) -> Option<u16> {
    let rest = class.split("Arch:").nth(1)?;
    rest.get(..5)?.parse().ok()
}

/// Whether the user class names iPXE: RFC 3004 format (length-prefixed
/// entries) or the bare string older iPXE builds send.
fn user_class_is_ipxe(value: &[u8]) -> bool {
    if value == b"iPXE" {
        return true;
    }
    let mut i = 0;
    while i < value.len() {
        let len = usize::from(value[i]);
        match value.get(i + 1..i + 1 + len) {
            Some(b"iPXE") => return true,
            Some(_) => i += 1 + len,
            None => return false,
        }
    }
    false
}

/// Classifies a request.
pub fn detect(request: &Request) -> Client {
    let vendor_class = request.text(code::VENDOR_CLASS).unwrap_or_default();
    let arch_codes = request.architectures();
    let code = arch_codes.first().copied().or_else(|| arch_from_vendor_class(&vendor_class));
    let (arch, http_arch) = match code.map(Arch::from_code) {
        Some((arch, http)) => (Some(arch), http),
        None => (None, false),
    };
    // iPXE identifies itself by user class "iPXE" or its option 175.
    let is_ipxe = request.option(code::USER_CLASS).is_some_and(user_class_is_ipxe)
        || request.option(code::IPXE_ENCAP).is_some_and(|v| sub_options(v).is_ok());
    let loader = if is_ipxe {
        Loader::Ipxe
    } else if vendor_class.starts_with("HTTPClient") || http_arch {
        Loader::Http
    } else if vendor_class.starts_with("PXEClient") {
        Loader::Pxe
    } else {
        Loader::None
    };
    Client { loader, arch, arch_codes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::datagram;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

    fn client(options: &[(u8, &[u8])]) -> Client {
        let mut all: Vec<(u8, &[u8])> = vec![(53, &[1])];
        all.extend_from_slice(options);
        detect(&Request::parse(&datagram(MAC, &all)).unwrap())
    }

    /// Options sent, and the loader and architecture expected.
    type Case = (Vec<(u8, &'static [u8])>, Loader, Option<Arch>);

    #[test]
    fn clients_are_told_apart() {
        let cases: Vec<Case> = vec![
            (vec![], Loader::None, None),
            (vec![(60, b"android-dhcp-13")], Loader::None, None),
            (vec![(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, &[0, 0])], Loader::Pxe, Some(Arch::Bios)),
            // Architecture from the vendor class alone.
            (vec![(60, b"PXEClient:Arch:00007:UNDI:003016")], Loader::Pxe, Some(Arch::EfiX64)),
            (
                vec![(60, b"PXEClient:Arch:00011:UNDI:003000"), (93, &[0, 11])],
                Loader::Pxe,
                Some(Arch::EfiArm64),
            ),
            (
                vec![(60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, &[0, 16])],
                Loader::Http,
                Some(Arch::EfiX64),
            ),
            // iPXE: RFC 3004 user class, or the bare string, or option 175.
            (
                vec![(60, b"PXEClient:Arch:00000:UNDI:002001"), (77, b"\x04iPXE"), (93, &[0, 0])],
                Loader::Ipxe,
                Some(Arch::Bios),
            ),
            (vec![(77, b"iPXE"), (93, &[0, 7])], Loader::Ipxe, Some(Arch::EfiX64)),
            (vec![(175, &[177, 5, 1, 0x10, 0xec, 0x81, 0x39])], Loader::Ipxe, None),
        ];
        for (i, (options, loader, arch)) in cases.into_iter().enumerate() {
            let c = client(&options);
            assert_eq!((c.loader, c.arch), (loader, arch), "case {i}");
        }
    }

    #[test]
    fn every_listed_architecture_is_kept() {
        assert_eq!(client(&[(60, b"PXEClient"), (93, &[0, 7, 0, 0])]).arch_codes, [7, 0]);
    }

    #[test]
    fn names_match_the_rules_engine() {
        assert_eq!(Arch::from_code(9).0.name(), "efi-x64");
        assert_eq!(Arch::from_code(0).0.name(), "bios");
        assert_eq!(Arch::from_code(42).0.name(), "arch-42");
    }
}
