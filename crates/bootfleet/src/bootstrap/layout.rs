//! Where things go on each medium: file names, the isolinux
//! configuration, the EFI system partition's size and the disk image's
//! partition table. Pure; `write` does the I/O.
//!
//! Script delivery, per loader (what the iPXE builds document):
//! - BIOS: isolinux loads `ipxe.lkrn` as a kernel with the script as its
//!   initrd; iPXE runs an initrd it is given as its first image. Debian
//!   12's 2019 build does this.
//! - UEFI: the firmware starts `\EFI\BOOT\BOOTX64.EFI` (iPXE); iPXE from
//!   1.21.1 (2021) runs `autoexec.ipxe` from the directory it was loaded
//!   from. Debian 12's 2019 `ipxe.efi` has no such step (and no command
//!   line), so UEFI media need a later build (Debian 13's package).

/// The script beside `ipxe.lkrn` on the ISO.
pub(crate) const BIOS_SCRIPT: &str = "bootstrap.ipxe";
/// The BIOS loader on the ISO.
pub(crate) const BIOS_LOADER: &str = "ipxe.lkrn";
/// The script's name beside the EFI loader, as iPXE looks for it.
pub(crate) const EFI_SCRIPT: &str = "autoexec.ipxe";
/// The firmware's removable-media path on x86-64, as FAT directories.
pub(crate) const EFI_DIR: [&str; 2] = ["EFI", "BOOT"];
/// The loader's name there.
pub(crate) const EFI_LOADER: &str = "BOOTX64.EFI";
/// The El Torito EFI image (a FAT filesystem) inside the ISO.
pub(crate) const ISO_EFI_IMAGE: &str = "efiboot.img";
/// The ISO's volume label.
pub(crate) const VOLUME: &str = "BOOTFLEET";
/// First sector of the disk image's partition (1 MiB, aligned).
pub(crate) const PARTITION_START_LBA: u32 = 2048;
/// Sector size of the disk image.
pub(crate) const SECTOR: u64 = 512;

/// isolinux boots iPXE at once, with the script as its initrd.
pub(crate) fn isolinux_cfg() -> String {
    format!(
        "DEFAULT bootstrap\nPROMPT 0\nTIMEOUT 0\nLABEL bootstrap\n  KERNEL /{BIOS_LOADER}\n  INITRD /{BIOS_SCRIPT}\n"
    )
}

/// Size in KiB of a FAT filesystem holding `payload` bytes of files:
/// the payload, room for FAT tables and directories, rounded up to whole
/// MiB, at least 2 MiB (mkfs.vfat's FAT12 is fine at that size).
pub(crate) fn fat_kib(payload: u64) -> u64 {
    let with_room = payload + payload / 8 + 256 * 1024;
    let mib = with_room.div_ceil(1024 * 1024).max(2);
    mib * 1024
}

/// A master boot record with one partition of type 0xEF (EFI system
/// partition) from [`PARTITION_START_LBA`] over `sectors` sectors: UEFI
/// firmware boots `\EFI\BOOT\BOOTX64.EFI` from it. No boot code: under
/// BIOS the disk is not bootable and firmware moves on.
pub(crate) fn mbr(sectors: u32, disk_id: u32) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    mbr[440..444].copy_from_slice(&disk_id.to_le_bytes());
    let entry = &mut mbr[446..462];
    entry[0] = 0x00; // not active
    // CHS fields unused by UEFI: "beyond CHS" markers.
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[4] = 0xef;
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&PARTITION_START_LBA.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr
}

/// xorriso's arguments (mkisofs emulation) for a hybrid ISO of `root`:
/// isolinux for BIOS, the FAT image for UEFI, an MBR and a GPT entry so
/// the same image boots `dd`ed to a USB stick. Without `efi`, BIOS only.
pub(crate) fn xorriso_args(isohybrid_mbr: &str, output: &str, root: &str, efi: bool) -> Vec<String> {
    let mut args: Vec<String> = ["-as", "mkisofs", "-quiet", "-o", output, "-V", VOLUME, "-isohybrid-mbr"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.push(isohybrid_mbr.to_owned());
    args.extend(
        [
            "-c",
            "isolinux/boot.cat",
            "-b",
            "isolinux/isolinux.bin",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ]
        .map(str::to_owned),
    );
    if efi {
        args.extend(
            ["-eltorito-alt-boot", "-e", ISO_EFI_IMAGE, "-no-emul-boot", "-isohybrid-gpt-basdat"]
                .map(str::to_owned),
        );
    }
    args.push(root.to_owned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolinux_hands_the_script_to_ipxe_as_its_initrd() {
        assert_eq!(
            isolinux_cfg(),
            "DEFAULT bootstrap\nPROMPT 0\nTIMEOUT 0\nLABEL bootstrap\n  KERNEL /ipxe.lkrn\n  INITRD /bootstrap.ipxe\n"
        );
    }

    #[test]
    fn fat_sizes_leave_room_and_are_whole_mib() {
        assert_eq!(fat_kib(0), 2048);
        assert_eq!(fat_kib(1_000_000), 2048);
        assert_eq!(fat_kib(3 * 1024 * 1024), 4096);
        for payload in [0, 1, 850_528, 996_864, 5 << 20] {
            let kib = fat_kib(payload);
            assert_eq!(kib % 1024, 0);
            assert!(kib * 1024 >= payload + payload / 8 + 256 * 1024, "{payload}");
        }
    }

    #[test]
    fn the_mbr_holds_one_efi_system_partition() {
        let mbr = mbr(4096 * 2, 0xb007_f1ee);
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);
        assert_eq!(u32::from_le_bytes(mbr[440..444].try_into().unwrap()), 0xb007_f1ee);
        assert_eq!(mbr[446 + 4], 0xef);
        assert_eq!(u32::from_le_bytes(mbr[454..458].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(mbr[458..462].try_into().unwrap()), 8192);
        // The other three entries are empty, and there is no boot code.
        assert!(mbr[462..510].iter().all(|&b| b == 0));
        assert!(mbr[..440].iter().all(|&b| b == 0));
    }

    #[test]
    fn xorriso_builds_a_hybrid_iso() {
        let args = xorriso_args("/usr/lib/ISOLINUX/isohdpfx.bin", "out.iso", "root", true);
        let line = args.join(" ");
        assert!(line.starts_with(
            "-as mkisofs -quiet -o out.iso -V BOOTFLEET -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin "
        ));
        assert!(line.contains(" -b isolinux/isolinux.bin -no-emul-boot -boot-load-size 4 -boot-info-table "));
        assert!(
            line.ends_with(" -eltorito-alt-boot -e efiboot.img -no-emul-boot -isohybrid-gpt-basdat root")
        );
        let bios_only = xorriso_args("m", "o", "r", false).join(" ");
        assert!(!bios_only.contains("efiboot") && bios_only.ends_with("-boot-info-table r"), "{bios_only}");
    }
}
