//! The migration connection: length-prefixed JSON messages, and byte streams (directory trees)
//! sent as chunks ending with an empty one, all over one TCP stream.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use serde::{Deserialize, Serialize};

use super::MigrateError;

/// The largest message accepted (a path list of a big rootfs fits; a corrupt length does not
/// make us allocate gigabytes).
const MAX_MSG: usize = 64 << 20;
/// The largest data chunk.
const CHUNK: usize = 256 << 10;

/// What the two ends say to each other, in order:
/// receiver `Hello` → sender `Auth` → receiver `Auth` → sender `Offer` → receiver `Accept` |
/// `Refuse` → sender: `Tree` (rootfs, full) … `Tree` (rootfs, changes) + `Paths`, `Tree`
/// (images), `Restore` → receiver `Restored` | `Failed`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum Msg {
    Hello {
        version: u32,
        nonce: String,
    },
    Auth {
        mac: String,
        nonce: String,
    },
    Offer(Box<Offer>),
    Accept,
    Refuse {
        reason: String,
    },
    /// A tree follows as a chunk stream (a tar archive) to unpack into `into`.
    Tree {
        into: TreeDest,
    },
    /// Every path of the rootfs now (relative): the receiver removes what is not listed.
    Paths {
        paths: Vec<String>,
    },
    Restore {
        /// Post-copy: the source's page server (address, port).
        page_server: Option<(String, u16)>,
    },
    Restored {
        pid: i32,
        restore_ms: u64,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TreeDest {
    Rootfs,
    Images,
}

/// What the sender proposes to move.
#[derive(Debug, Serialize, Deserialize)]
pub struct Offer {
    pub id: String,
    /// The container's config.json (root.path is set by the receiver).
    pub config: serde_json::Value,
    /// The cgroup the container is in at the source (the receiver may prefix it).
    pub cgroup_path: String,
    /// The rootfs is on storage both hosts share, at this path: it is not copied.
    pub shared_rootfs: Option<String>,
    pub lazy: bool,
    /// The criu flags restore needs too (as given to the dump).
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    /// `--empty-ns network`.
    pub empty_net: bool,
}

pub struct Conn {
    pub stream: TcpStream,
}

impl Conn {
    pub fn send(&mut self, m: &Msg) -> Result<(), MigrateError> {
        let data = serde_json::to_vec(m).map_err(|e| MigrateError::Protocol(e.to_string()))?;
        let len = u32::try_from(data.len())
            .ok()
            .filter(|n| (*n as usize) <= MAX_MSG)
            .ok_or_else(|| MigrateError::Protocol("message too large".into()))?;
        self.stream.write_all(&len.to_be_bytes())?;
        self.stream.write_all(&data)?;
        Ok(())
    }

    pub fn recv(&mut self) -> Result<Msg, MigrateError> {
        self.recv_max(MAX_MSG)
    }

    /// A message of at most `max` bytes (before authentication, a peer gets little).
    pub fn recv_max(&mut self, max: usize) -> Result<Msg, MigrateError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                MigrateError::Protocol("the other end closed the connection".into())
            } else {
                MigrateError::Io(e)
            }
        })?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(MigrateError::Protocol(format!(
                "message of {len} bytes (at most {max})"
            )));
        }
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data)?;
        serde_json::from_slice(&data).map_err(|e| MigrateError::Protocol(e.to_string()))
    }

    /// A writer of one chunk stream; `finish` ends it.
    pub fn chunks(&mut self) -> ChunkWriter<'_> {
        ChunkWriter {
            out: &mut self.stream,
            buf: Vec::with_capacity(CHUNK),
            sent: 0,
        }
    }

    /// A reader of one chunk stream (EOF at its end).
    pub fn chunk_reader(&mut self) -> ChunkReader<'_> {
        ChunkReader {
            inp: &mut self.stream,
            left: 0,
            done: false,
        }
    }
}

pub struct ChunkWriter<'a> {
    out: &'a mut TcpStream,
    buf: Vec<u8>,
    /// Bytes sent so far.
    pub sent: u64,
}

impl ChunkWriter<'_> {
    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.write_all(&(self.buf.len() as u32).to_be_bytes())?;
        self.out.write_all(&self.buf)?;
        self.sent += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Send what is buffered and the end mark; the bytes sent.
    pub fn finish(mut self) -> io::Result<u64> {
        self.flush_chunk()?;
        self.out.write_all(&0u32.to_be_bytes())?;
        Ok(self.sent)
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct ChunkReader<'a> {
    inp: &'a mut TcpStream,
    left: usize,
    done: bool,
}

impl ChunkReader<'_> {
    /// Read (and drop) whatever of the stream is left, so the next message lines up.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut len = [0u8; 4];
            self.inp.read_exact(&mut len)?;
            let n = u32::from_be_bytes(len) as usize;
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            if n > CHUNK {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("chunk of {n} bytes (at most {CHUNK})"),
                ));
            }
            self.left = n;
        }
        let want = buf.len().min(self.left);
        let got = self.inp.read(&mut buf[..want])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= got;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (Conn, Conn) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (Conn { stream: a }, Conn { stream: b })
    }

    #[test]
    fn messages_and_chunk_streams_line_up() {
        let (mut a, mut b) = pair();
        let big: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let sender = {
            let big = big.clone();
            std::thread::spawn(move || {
                a.send(&Msg::Tree {
                    into: TreeDest::Images,
                })
                .unwrap();
                let mut w = a.chunks();
                w.write_all(&big).unwrap();
                assert_eq!(w.finish().unwrap(), big.len() as u64);
                a.send(&Msg::Accept).unwrap();
                a
            })
        };
        assert!(matches!(
            b.recv().unwrap(),
            Msg::Tree {
                into: TreeDest::Images
            }
        ));
        let mut got = Vec::new();
        b.chunk_reader().read_to_end(&mut got).unwrap();
        assert_eq!(got, big);
        assert!(matches!(b.recv().unwrap(), Msg::Accept));
        drop(sender.join().unwrap());
        // The other end gone: a one-line error, no panic.
        let e = b.recv().unwrap_err().to_string();
        assert!(e.contains("closed the connection"), "{e}");
    }

    #[test]
    fn oversized_or_garbage_input_is_an_error() {
        let (mut a, mut b) = pair();
        a.stream.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(b.recv().unwrap_err().to_string().contains("at most"));
        let (mut a, mut b) = pair();
        a.stream.write_all(&5u32.to_be_bytes()).unwrap();
        a.stream.write_all(b"{nope").unwrap();
        assert!(b.recv().is_err());
        let (mut a, mut b) = pair();
        a.stream
            .write_all(&(CHUNK as u32 + 1).to_be_bytes())
            .unwrap();
        let mut sink = Vec::new();
        assert!(b.chunk_reader().read_to_end(&mut sink).is_err());
    }
}
