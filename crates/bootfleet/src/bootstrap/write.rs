//! Writes the media: a thin shell over Debian's tools (`xorriso`,
//! `mkfs.vfat`, `mtools`) and the files `layout` places. Output goes to a
//! temporary file beside the target and is renamed over it once whole,
//! so a failed build never leaves half a medium under the target's name.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::BootstrapError;
use super::layout;

/// isolinux's files, from Debian's `isolinux` and `syslinux-common`.
const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
const ISOHDPFX_BIN: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// A scratch directory beside the output, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The output being written: a temporary name beside it until [`Self::finish`].
struct Pending {
    target: PathBuf,
    partial: PathBuf,
    scratch: Scratch,
}

impl Pending {
    /// Claims a temporary file and a scratch directory beside `target`;
    /// fails at once, naming `target`, when its directory is not writable.
    fn start(target: &Path) -> Result<Self, BootstrapError> {
        let unwritable = |source| BootstrapError::Unwritable { path: target.to_owned(), source };
        if target.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::IsADirectory, "it is a directory");
            return Err(unwritable(source));
        }
        let name = target.file_name().map_or_else(|| "medium".into(), |n| n.to_string_lossy().into_owned());
        let dir = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        let pid = std::process::id();
        let partial = dir.join(format!(".{name}.partial-{pid}"));
        fs::File::create(&partial).map_err(unwritable)?;
        let scratch = dir.join(format!(".{name}.scratch-{pid}"));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir(&scratch).map_err(unwritable)?;
        Ok(Self { target: target.to_owned(), partial, scratch: Scratch(scratch) })
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.scratch.0.join(name)
    }

    fn finish(self) -> Result<(), BootstrapError> {
        fs::rename(&self.partial, &self.target)
            .map_err(|source| BootstrapError::Unwritable { path: self.target.clone(), source })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // After `finish` the partial name is gone and this does nothing.
        let _ = fs::remove_file(&self.partial);
    }
}

/// Runs a tool; a missing one is named with its Debian package.
fn run(command: &mut Command, package: &'static str) -> Result<(), BootstrapError> {
    let tool = command.get_program().to_string_lossy().into_owned();
    let out = command.env("MTOOLS_SKIP_CHECK", "1").output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            BootstrapError::MissingTool { tool: tool.clone(), package }
        } else {
            BootstrapError::Tool { tool: tool.clone(), detail: e.to_string() }
        }
    })?;
    if !out.status.success() {
        let detail = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        return Err(BootstrapError::Tool { tool, detail });
    }
    Ok(())
}

fn read_loader(path: &Path) -> Result<Vec<u8>, BootstrapError> {
    fs::read(path).map_err(|source| BootstrapError::Loader { path: path.to_owned(), source })
}

fn need_file(path: &str, package: &'static str) -> Result<(), BootstrapError> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(BootstrapError::MissingTool { tool: path.to_owned(), package })
    }
}

fn copy_in(bytes: &[u8], to: &Path) -> Result<(), BootstrapError> {
    fs::write(to, bytes)
        .map_err(|e| BootstrapError::Tool { tool: "write".into(), detail: format!("{}: {e}", to.display()) })
}

/// A FAT filesystem image at `image` holding the EFI loader and the
/// script in `\EFI\BOOT`.
fn efi_fat(image: &Path, loader: &Path, script: &Path, payload: u64) -> Result<(), BootstrapError> {
    let kib = layout::fat_kib(payload).to_string();
    run(Command::new("mkfs.vfat").args(["-C", "-n", layout::VOLUME]).arg(image).arg(&kib), "dosfstools")?;
    let dir = format!("::/{}", layout::EFI_DIR[0]);
    let boot = format!("::/{}", layout::EFI_DIR.join("/"));
    run(Command::new("mmd").arg("-i").arg(image).args([&dir, &boot]), "mtools")?;
    let target = |name: &str| format!("{boot}/{name}");
    run(Command::new("mcopy").arg("-i").arg(image).arg(loader).arg(target(layout::EFI_LOADER)), "mtools")?;
    run(Command::new("mcopy").arg("-i").arg(image).arg(script).arg(target(layout::EFI_SCRIPT)), "mtools")?;
    Ok(())
}

/// Checks that an EFI loader runs `autoexec.ipxe` (iPXE ≥ 1.21.1 names it
/// in its image; Debian 12's 2019 build does not).
pub(crate) fn check_efi_loader(path: &Path) -> Result<Vec<u8>, BootstrapError> {
    let bytes = read_loader(path)?;
    if !bytes.windows(layout::EFI_SCRIPT.len()).any(|w| w == layout::EFI_SCRIPT.as_bytes()) {
        return Err(BootstrapError::LoaderIgnoresScript { path: path.to_owned() });
    }
    Ok(bytes)
}

/// The hybrid ISO; `efi` is the UEFI loader's bytes, `None` for BIOS only.
pub(crate) fn iso(
    target: &Path,
    script: &str,
    lkrn: &Path,
    efi: Option<&[u8]>,
) -> Result<(), BootstrapError> {
    let lkrn = read_loader(lkrn)?;
    for (file, package) in
        [(ISOLINUX_BIN, "isolinux"), (ISOHDPFX_BIN, "isolinux"), (LDLINUX_C32, "syslinux-common")]
    {
        need_file(file, package)?;
    }
    let pending = Pending::start(target)?;
    let root = pending.scratch("root");
    let isolinux = root.join("isolinux");
    fs::create_dir_all(&isolinux)
        .map_err(|e| BootstrapError::Tool { tool: "mkdir".into(), detail: e.to_string() })?;
    for (from, name) in [(ISOLINUX_BIN, "isolinux.bin"), (LDLINUX_C32, "ldlinux.c32")] {
        let bytes =
            fs::read(from).map_err(|e| BootstrapError::Tool { tool: from.into(), detail: e.to_string() })?;
        copy_in(&bytes, &isolinux.join(name))?;
    }
    copy_in(layout::isolinux_cfg().as_bytes(), &isolinux.join("isolinux.cfg"))?;
    copy_in(&lkrn, &root.join(layout::BIOS_LOADER))?;
    copy_in(script.as_bytes(), &root.join(layout::BIOS_SCRIPT))?;
    if let Some(efi) = efi {
        let (loader, script_file) = (pending.scratch("loader.efi"), pending.scratch(layout::EFI_SCRIPT));
        copy_in(efi, &loader)?;
        copy_in(script.as_bytes(), &script_file)?;
        let payload = (efi.len() + script.len()) as u64;
        efi_fat(&root.join(layout::ISO_EFI_IMAGE), &loader, &script_file, payload)?;
    }
    let args = layout::xorriso_args(
        ISOHDPFX_BIN,
        &pending.partial.to_string_lossy(),
        &root.to_string_lossy(),
        efi.is_some(),
    );
    run(Command::new("xorriso").args(&args), "xorriso")?;
    pending.finish()
}

/// The raw disk image: an MBR and one EFI system partition.
pub(crate) fn disk(target: &Path, script: &str, efi: &[u8]) -> Result<(), BootstrapError> {
    let pending = Pending::start(target)?;
    let (loader, script_file, fat) =
        (pending.scratch("loader.efi"), pending.scratch(layout::EFI_SCRIPT), pending.scratch("esp.img"));
    copy_in(efi, &loader)?;
    copy_in(script.as_bytes(), &script_file)?;
    efi_fat(&fat, &loader, &script_file, (efi.len() + script.len()) as u64)?;
    let fat = fs::read(&fat)
        .map_err(|e| BootstrapError::Tool { tool: "mkfs.vfat".into(), detail: e.to_string() })?;
    let sectors = u32::try_from(fat.len() as u64 / layout::SECTOR).unwrap_or(u32::MAX);
    // A disk id from the build time: distinct media, distinct ids.
    let disk_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32 ^ d.subsec_nanos());
    let mut image = vec![0u8; (u64::from(layout::PARTITION_START_LBA) * layout::SECTOR) as usize];
    image[..512].copy_from_slice(&layout::mbr(sectors, disk_id));
    image.extend_from_slice(&fat);
    let unwritable = |source| BootstrapError::Unwritable { path: target.to_owned(), source };
    fs::write(&pending.partial, &image).map_err(unwritable)?;
    pending.finish()
}

/// The EFI loader at `target` and the script beside it as `autoexec.ipxe`.
pub(crate) fn efi(target: &Path, script: &str, efi: &[u8]) -> Result<(), BootstrapError> {
    let beside = script_beside(target);
    if beside == target {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "that is the script's own name");
        return Err(BootstrapError::Unwritable { path: target.to_owned(), source });
    }
    let pending = Pending::start(target)?;
    let unwritable = |path: &Path| {
        let path = path.to_owned();
        move |source| BootstrapError::Unwritable { path, source }
    };
    fs::write(&pending.partial, efi).map_err(unwritable(target))?;
    fs::write(&beside, script).map_err(unwritable(&beside))?;
    pending.finish()
}

/// Where the EFI output's script goes.
pub(crate) fn script_beside(efi: &Path) -> PathBuf {
    efi.with_file_name(layout::EFI_SCRIPT)
}
