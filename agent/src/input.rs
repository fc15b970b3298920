//! Opening the files a user names (policy, config, captures): only regular files,
//! and never more than a stated size, so a FIFO, a device such as `/dev/zero` or a
//! runaway file is an error that names the path instead of a hang or an exhausted
//! memory.

use std::{
    fs::File,
    io::{self, Read as _},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Largest policy or config file read (YAML written by people or by a controller).
pub const MAX_TEXT_FILE: u64 = 32 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum InputError {
    #[error("{}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{}: is {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: {size} bytes is more than the {max} bytes this file may have", path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: not UTF-8 text: invalid byte at line {line}, column {column}", path.display())]
    NotUtf8 {
        path: PathBuf,
        line: usize,
        column: usize,
    },
}

impl InputError {
    pub fn path(&self) -> &Path {
        match self {
            Self::Open { path, .. }
            | Self::NotRegular { path, .. }
            | Self::TooLarge { path, .. }
            | Self::Read { path, .. }
            | Self::NotUtf8 { path, .. } => path,
        }
    }
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file of at most `max` bytes.
///
/// The file is opened with `O_NONBLOCK` (opening a FIFO for reading would otherwise
/// wait for a writer) and checked with `fstat` on the open descriptor, so a path
/// swapped between a check and the open cannot slip through.
pub fn open_regular(path: &Path, max: u64) -> Result<(File, u64), InputError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| InputError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| InputError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(InputError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    if meta.len() > max {
        return Err(InputError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            max,
        });
    }
    Ok((file, meta.len()))
}

/// Reads a regular file of at most `max` bytes. A file that grows past `max` while
/// it is read is refused too.
pub fn read_bytes(path: &Path, max: u64) -> Result<Vec<u8>, InputError> {
    let (file, len) = open_regular(path, max)?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| InputError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > max {
        return Err(InputError::TooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
            max,
        });
    }
    Ok(buf)
}

/// Reads a regular UTF-8 text file of at most `max` bytes; invalid UTF-8 is an
/// error that names the line and column of the first bad byte.
pub fn read_text(path: &Path, max: u64) -> Result<String, InputError> {
    let bytes = read_bytes(path, max)?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Columns count characters of the valid prefix of the line, from 1.
        let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
        InputError::NotUtf8 {
            path: path.to_path_buf(),
            line,
            column,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("p");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_text(&fifo, 100).expect_err("a FIFO");
        assert!(
            err.to_string()
                .ends_with("is a FIFO (named pipe), not a regular file"),
            "{err}"
        );
        let err = read_text(Path::new("/dev/zero"), 100).expect_err("a device");
        assert_eq!(
            err.to_string(),
            "/dev/zero: is a character device, not a regular file"
        );
        let err = read_text(dir.path(), 100).expect_err("a directory");
        assert!(
            err.to_string()
                .ends_with("is a directory, not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn refuses_large_files_and_names_bad_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("big.yaml");
        std::fs::write(&f, vec![b'a'; 101]).expect("write");
        let err = read_text(&f, 100).expect_err("too large");
        assert!(
            err.to_string()
                .ends_with("101 bytes is more than the 100 bytes this file may have"),
            "{err}"
        );
        std::fs::write(&f, b"a: 1\nb: x\xffy\n").expect("write");
        let err = read_text(&f, 100).expect_err("not UTF-8");
        assert!(
            err.to_string()
                .ends_with("invalid byte at line 2, column 5"),
            "{err}"
        );
        std::fs::write(&f, "a: é\n").expect("write");
        assert_eq!(read_text(&f, 100).expect("text"), "a: é\n");
    }
}
