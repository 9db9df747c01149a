// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! The milter socket: binding `inet:`/`inet6:`/`unix:` specs, removing a
//! stale unix socket safely, and keeping TCP acknowledgements immediate.

use crate::config::{FileMode, SocketSpec};
use indymilter::{EitherListener, Listener};
use socket2::SockRef;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener};

/// A bound milter socket.
pub type MilterListener = EitherListener<QuickAckListener, UnixListener>;

/// Binds the configured socket. A unix socket left behind by a process that
/// is gone is removed; one that still answers is in use and is an error, as
/// is a path that is not a socket at all. `quickack` keeps TCP
/// acknowledgements immediate (see [`QuickAckListener`]).
pub async fn bind(spec: &SocketSpec, mode: FileMode, quickack: bool) -> io::Result<MilterListener> {
    match spec {
        SocketSpec::Inet(addr) => {
            let listener = TcpListener::bind(addr).await?;
            Ok(EitherListener::Tcp(QuickAckListener::new(listener, quickack)))
        }
        SocketSpec::Unix(path) => {
            remove_stale_socket(path).await?;
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0))?;
            Ok(EitherListener::Unix(listener))
        }
    }
}

/// Why a socket could not be bound, as [`bind_failure`] explains it.
#[derive(Debug, PartialEq, Eq)]
pub struct BindFailure {
    /// What went wrong and what to do about it, for the log.
    pub message: String,
    /// The configuration or the host's setup is at fault (a missing
    /// directory, no permission, a path that is not a socket): a restart
    /// cannot fix it, so the daemon exits with `EX_CONFIG` (78), which the
    /// packaged unit does not restart on. Otherwise (an address in use, or
    /// not on this host yet) a restart may help.
    pub config: bool,
}

/// The queue directory of Debian's Postfix, where the packaged socket is.
const POSTFIX_SPOOL: &str = "/var/spool/postfix";

/// Explains an error of [`bind`] in words a postmaster can act on.
pub fn bind_failure(spec: &SocketSpec, e: &io::Error) -> BindFailure {
    let config = |message: String| BindFailure { message, config: true };
    match spec {
        SocketSpec::Unix(path) => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            match e.kind() {
                io::ErrorKind::NotFound if !dir.is_dir() => config(missing_socket_dir(dir)),
                io::ErrorKind::PermissionDenied => config(format!(
                    "{e}: the daemon's user may not create the socket in {}: make the directory writable by the user it runs as (egress-milter under the packaged unit), or choose another socket; see docs/install.md, step 8",
                    dir.display()
                )),
                io::ErrorKind::ReadOnlyFilesystem => config(format!(
                    "{e}: {} is read-only for the daemon: under systemd, add it to the unit's ReadWritePaths= with a drop-in (systemctl edit egress-milter); see docs/install.md, step 9",
                    dir.display()
                )),
                io::ErrorKind::NotADirectory => config(format!(
                    "{e}: a part of the socket's path {} is not a directory",
                    path.display()
                )),
                // The path is not a socket (never removed), or too long
                // for a unix socket.
                io::ErrorKind::AlreadyExists | io::ErrorKind::InvalidInput => config(e.to_string()),
                // Another milter answers on it; it may be on its way out.
                _ => BindFailure {
                    message: e.to_string(),
                    config: false,
                },
            }
        }
        SocketSpec::Inet(addr) => match e.kind() {
            io::ErrorKind::PermissionDenied => config(format!(
                "{e}: port {} needs privileges the daemon does not have (and should not): choose a port above 1023",
                addr.port()
            )),
            io::ErrorKind::AddrInUse => BindFailure {
                message: format!("{e}: another process listens on {addr} (an earlier egress-milter still stopping?)"),
                config: false,
            },
            io::ErrorKind::AddrNotAvailable => BindFailure {
                message: format!("{e}: {} is not an address of this host (yet)", addr.ip()),
                config: false,
            },
            _ => BindFailure {
                message: e.to_string(),
                config: false,
            },
        },
    }
}

/// The socket's directory is missing: where the packaged socket is, that
/// means Postfix is not (yet) installed.
fn missing_socket_dir(dir: &Path) -> String {
    let dir_shown = dir.display();
    if !dir.starts_with(POSTFIX_SPOOL) {
        return format!(
            "the socket's directory {dir_shown} does not exist: create it, writable by the user the daemon runs as, or choose another socket; see docs/install.md, step 8"
        );
    }
    let spool = Path::new(POSTFIX_SPOOL).is_dir();
    let group = matches!(nix::unistd::Group::from_name("postfix"), Ok(Some(_)));
    let missing = match (spool, group) {
        (false, false) => Some(format!("no {POSTFIX_SPOOL}, no group postfix")),
        (false, true) => Some(format!("no {POSTFIX_SPOOL}")),
        (true, false) => Some("no group postfix".to_string()),
        (true, true) => None,
    };
    match missing {
        Some(missing) => format!(
            "the socket's directory {dir_shown} does not exist: is Postfix installed? ({missing}): the packaged unit makes the directory at start once Postfix is there; install it, then systemctl restart egress-milter; see docs/install.md, step 2"
        ),
        None => format!(
            "the socket's directory {dir_shown} does not exist: the packaged unit makes it at start; otherwise make it as it does, install -d -o egress-milter -g postfix -m 2750 {dir_shown}; see docs/install.md, step 8"
        ),
    }
}

async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket; not removing it", path.display()),
        ));
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by another running milter", path.display()),
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

/// Removes the unix socket at shutdown.
pub struct SocketCleanup(pub Option<PathBuf>);

impl Drop for SocketCleanup {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A TCP listener whose connections acknowledge every read at once.
///
/// An MTA writes milter commands as small packets back to back; with Nagle's
/// algorithm on its side and delayed ACKs on ours, each message in an SMTP
/// session waits ~40 ms for an acknowledgement. Re-arming `TCP_QUICKACK`
/// after each read (Linux resets it) removes the stall from our side.
/// With `enabled` false (config `tcp_quickack = false`) the sockets keep the
/// kernel's default, which is only useful to measure the stall.
pub struct QuickAckListener {
    listener: TcpListener,
    enabled: bool,
}

impl QuickAckListener {
    pub fn new(listener: TcpListener, enabled: bool) -> Self {
        Self { listener, enabled }
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

impl Listener for QuickAckListener {
    type Io = QuickAckStream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<QuickAckStream>> {
        let enabled = self.enabled;
        self.listener.poll_accept(cx).map_ok(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            if enabled {
                quickack(&stream);
            }
            QuickAckStream { stream, enabled }
        })
    }
}

fn quickack(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = SockRef::from(stream).set_tcp_quickack(true);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = SockRef::from(stream);
}

pub struct QuickAckStream {
    stream: TcpStream,
    enabled: bool,
}

impl QuickAckStream {
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

impl AsyncRead for QuickAckStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if polled.is_ready() && self.enabled {
            quickack(&self.stream);
        }
        polled
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_unix_socket_is_replaced_live_one_and_plain_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("milter.sock");
        let spec = SocketSpec::Unix(path.clone());
        // A socket nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind(&spec, FileMode(0o660), true).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // While it listens, a second bind must fail and leave it alone.
        let err = bind(&spec, FileMode(0o660), true).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(live);

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "precious").unwrap();
        let err = bind(&SocketSpec::Unix(file.clone()), FileMode(0o660), true)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        let failure = bind_failure(&SocketSpec::Unix(file.clone()), &err);
        assert!(
            failure.config && failure.message.contains("is not a socket"),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn a_socket_that_cannot_be_made_says_why_and_whether_a_restart_helps() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("spool/egress-milter");
        let spec = SocketSpec::Unix(missing.join("milter.sock"));
        let err = bind(&spec, FileMode(0o660), true).await.err().unwrap();
        let failure = bind_failure(&spec, &err);
        assert!(failure.config, "{failure:?}");
        assert_eq!(
            failure.message,
            format!(
                "the socket's directory {} does not exist: create it, writable by the user the daemon runs as, or choose another socket; see docs/install.md, step 8",
                missing.display()
            )
        );
        // The packaged socket's directory: Postfix is named.
        let packaged = Path::new("/var/spool/postfix/egress-milter-no-such-test-dir/milter.sock");
        let e = io::Error::from(io::ErrorKind::NotFound);
        let failure = bind_failure(&SocketSpec::Unix(packaged.into()), &e);
        assert!(failure.config, "{failure:?}");
        assert!(
            failure.message.starts_with(
                "the socket's directory /var/spool/postfix/egress-milter-no-such-test-dir does not exist: "
            ) && failure.message.contains("docs/install.md"),
            "{}",
            failure.message
        );
        // An address in use may be free after a restart.
        let addr = "127.0.0.1:25".parse().unwrap();
        let e = io::Error::from(io::ErrorKind::AddrInUse);
        assert!(!bind_failure(&SocketSpec::Inet(addr), &e).config);
        let e = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(bind_failure(&SocketSpec::Inet(addr), &e).config);
    }
}
