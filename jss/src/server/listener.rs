//! The unix socket: passed by systemd, or created here.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use tokio::net::UnixListener;

use super::ServerError;
use crate::config::Config;

/// A socket from systemd (LISTEN_FDS) if there is one, else a fresh one at
/// `cfg.socket`: parent created, a stale socket removed, mode applied.
pub fn bind(cfg: &Config) -> Result<(UnixListener, bool), ServerError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        let std = fds
            .take_unix_listener(0)
            .map_err(|e| ServerError::Socket {
                path: "LISTEN_FDS".into(),
                reason: format!("the socket passed by systemd is not a unix stream socket: {e}"),
            })?
            .ok_or_else(|| ServerError::Socket {
                path: "LISTEN_FDS".into(),
                reason: "systemd passed no socket".into(),
            })?;
        std.set_nonblocking(true)
            .map_err(|e| sock_err(&cfg.socket, e))?;
        let l = UnixListener::from_std(std).map_err(|e| sock_err(&cfg.socket, e))?;
        return Ok((l, true));
    }
    Ok((bind_path(&cfg.socket, cfg.socket_mode)?, false))
}

/// A fresh socket at `path`: parent created, a stale socket removed, `mode` applied.
pub fn bind_path(path: &Path, mode: u32) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| sock_err(dir, e))?;
    }
    remove_stale(path)?;
    let l = UnixListener::bind(path).map_err(|e| sock_err(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| sock_err(path, e))?;
    Ok(l)
}

fn sock_err(path: &Path, e: std::io::Error) -> ServerError {
    ServerError::Socket {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn remove_stale(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::Socket {
            path: path.to_path_buf(),
            reason: "exists and is not a socket; refusing to replace it".into(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServerError::Socket {
            path: path.to_path_buf(),
            reason: "another process is serving on it (is jss already running?)".into(),
        });
    }
    std::fs::remove_file(path).map_err(|e| sock_err(path, e))
}
