//! A throwaway certificate authority for TLS tests, made with the `openssl`
//! command (Debian's openssl): a CA, a server certificate for 127.0.0.1 and
//! localhost, and client certificates, as PEM files in a temporary directory
//! removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A CA and the files it issued, under a temporary directory.
pub struct TestPki {
    dir: tempfile::TempDir,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl").current_dir(dir).args(args).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl TestPki {
    /// A new CA named `common_name`, with a server certificate (`server`)
    /// valid for 127.0.0.1, ::1 and localhost.
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("bootfleet-pki-").tempdir()?;
        let subject = format!("/CN={common_name}");
        openssl(dir.path(), &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.ec.pem"])?;
        openssl(dir.path(), &["pkcs8", "-topk8", "-nocrypt", "-in", "ca.ec.pem", "-out", "ca.key"])?;
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                &subject,
                "-days",
                "2",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        let pki = Self { dir };
        pki.issue("server", "bootfleet-test-server", true)?;
        Ok(pki)
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate made by [`Self::new`].
    pub fn server(&self) -> CertFiles {
        self.files("server")
    }

    /// The files of certificate `name`, issued earlier.
    pub fn files(&self, name: &str) -> CertFiles {
        CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        }
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues certificate `name` with subject CN `common_name`: a server
    /// certificate (SANs 127.0.0.1, ::1, localhost; serverAuth and
    /// clientAuth, as etcd members use theirs both ways) or a client one.
    pub fn issue(&self, name: &str, common_name: &str, server: bool) -> anyhow::Result<CertFiles> {
        let dir = self.dir.path();
        let (ec, key, csr, cert, ext) = (
            format!("{name}.ec.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let extensions = if server {
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
                .to_owned()
        } else {
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=clientAuth\nsubjectAltName=DNS:{common_name}\n"
            )
        };
        std::fs::write(dir.join(&ext), extensions)?;
        openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &ec])?;
        openssl(dir, &["pkcs8", "-topk8", "-nocrypt", "-in", &ec, "-out", &key])?;
        openssl(dir, &["req", "-new", "-key", &key, "-subj", &format!("/CN={common_name}"), "-out", &csr])?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        )?;
        Ok(self.files(name))
    }
}
