//! Socket adapters for the client port.

use futures_lite::{AsyncRead, AsyncWrite};
use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Largest vectored write gathered into one send.
const MAX_GATHER: usize = 256 * 1024;

thread_local! {
    /// One gather buffer per shard thread: it only lives for the duration of one
    /// `poll_write_vectored` call (glommio sends synchronously and keeps no pointer to it).
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Turns a vectored write into one send. rustls hands all its pending TLS records to the
/// socket as one vectored write, but glommio's `TcpStream` has no vectored write, so the
/// default would send only the first record per call: one syscall, and on loopback one
/// packet through the whole TCP stack, per 16 KiB record. Copying the records into one buffer
/// costs far less than the sends it saves.
pub struct Gather<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Gather<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gather<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let non_empty = bufs.iter().filter(|b| !b.is_empty()).count();
        if non_empty <= 1 {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            return Pin::new(&mut self.0).poll_write(cx, first);
        }
        GATHER.with(|g| {
            let mut g = g.borrow_mut();
            g.clear();
            for b in bufs {
                if g.len() + b.len() > MAX_GATHER {
                    if g.is_empty() {
                        g.extend_from_slice(&b[..MAX_GATHER]);
                    }
                    break;
                }
                g.extend_from_slice(b);
            }
            // Bytes accepted from the gathered buffer are the same count of bytes from the
            // front of `bufs`, which is what a vectored write reports.
            Pin::new(&mut self.0).poll_write(cx, &g)
        })
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that accepts at most `limit` bytes per write and counts the writes.
    struct Sink {
        data: Vec<u8>,
        writes: usize,
        limit: usize,
    }

    impl AsyncWrite for Sink {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.data.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn vectored_writes_become_one_write_and_partial_writes_count_right() {
        use futures_lite::AsyncWriteExt;
        let parts: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let all: Vec<u8> = parts.concat();
        for limit in [usize::MAX, 777] {
            let mut g = Gather(Sink { data: Vec::new(), writes: 0, limit });
            futures_lite::future::block_on(async {
                let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
                let mut rest = &mut slices[..];
                while !rest.is_empty() {
                    let n = g.write_vectored(rest).await.unwrap();
                    IoSlice::advance_slices(&mut rest, n);
                }
            });
            assert_eq!(g.0.data, all, "limit {limit}");
            if limit == usize::MAX {
                assert_eq!(g.0.writes, 1);
            }
        }
    }
}
