//! Graceful shutdown of a listener's connections: what hyper-util's `GracefulShutdown` does
//! (a watch channel; on shutdown every connection is told to finish its request in progress
//! and close; the listener waits until they have), without its cost on every poll of every
//! connection. hyper-util polls the watch's `changed()` future each time a connection is polled
//! (every chunk of a stream), which takes the waiters' lock shared by all connections; here the
//! `changed()` future is polled only when its own waker has fired.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use tokio::sync::watch;

/// Tells every watched connection to shut down, then waits until they have.
pub(super) struct Graceful {
    tx: watch::Sender<()>,
}

impl Graceful {
    pub(super) fn new() -> Graceful {
        let (tx, _) = watch::channel(());
        Graceful { tx }
    }

    /// A watcher for one connection (it counts as open until its connection ends).
    pub(super) fn watcher(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
        }
    }

    /// Signals every watched connection, then waits until all have ended.
    pub(super) async fn shutdown(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

/// One connection's end of the signal.
pub(super) struct Watcher {
    rx: watch::Receiver<()>,
}

impl Watcher {
    /// `conn`, shut down gracefully when the signal comes.
    pub(super) fn watch<C: Connection>(self, conn: C) -> Watched<C> {
        let mut rx = self.rx;
        let changed: Cancel = Box::pin(async move {
            // An error is the sender gone: a shutdown all the same.
            let _ = rx.changed().await;
            rx
        });
        Watched {
            conn,
            cancel: Some(changed),
            kept: None,
            // Fired at first, so the first poll registers the signal's waker.
            signal: Arc::new(Signal {
                fired: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

/// The watch's `changed()` future, boxed once per connection.
type Cancel = Pin<Box<dyn Future<Output = watch::Receiver<()>> + Send>>;

/// A hyper connection that can be asked to finish its request in progress and close.
pub(super) trait Connection: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Connection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S, B, E> Connection for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// Whether the watch's waker has fired since the signal was last looked at, and the
/// connection's task to wake when it does.
struct Signal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// A connection under watch (see [`Watcher::watch`]).
    pub(super) struct Watched<C> {
        #[pin]
        conn: C,
        // Until the signal came.
        cancel: Option<Cancel>,
        // After it: the receiver, kept until the connection ends (the listener waits for it).
        kept: Option<watch::Receiver<()>>,
        signal: Arc<Signal>,
    }
}

impl<C: Connection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        if let Some(cancel) = this.cancel.as_mut() {
            this.signal.task.register(cx.waker());
            if this.signal.fired.swap(false, Ordering::AcqRel) {
                let waker = Waker::from(Arc::clone(this.signal));
                if let Poll::Ready(rx) = cancel.as_mut().poll(&mut Context::from_waker(&waker)) {
                    *this.kept = Some(rx);
                    *this.cancel = None;
                    this.conn.as_mut().graceful_shutdown();
                }
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that ends once told to shut down (and counts its polls).
    struct Fake {
        told: bool,
        polls: usize,
    }

    impl Future for Fake {
        type Output = Result<(), ()>;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            self.polls += 1;
            match self.told {
                true => Poll::Ready(Ok(())),
                false => Poll::Pending,
            }
        }
    }

    impl Connection for Fake {
        fn graceful_shutdown(mut self: Pin<&mut Self>) {
            self.told = true;
        }
    }

    #[tokio::test]
    async fn the_signal_reaches_a_waiting_connection_and_shutdown_waits_for_it() {
        let graceful = Graceful::new();
        let conn = tokio::spawn(graceful.watcher().watch(Fake {
            told: false,
            polls: 0,
        }));
        tokio::task::yield_now().await;
        assert!(!conn.is_finished());
        let shutdown = tokio::spawn(graceful.shutdown());
        assert_eq!(conn.await.unwrap(), Ok(()));
        shutdown.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_polled_often_looks_at_the_signal_only_when_it_fired() {
        let graceful = Graceful::new();
        let mut watched = Box::pin(graceful.watcher().watch(Fake {
            told: false,
            polls: 0,
        }));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..3 {
            assert!(watched.as_mut().poll(&mut cx).is_pending());
        }
        assert!(!watched.signal.fired.load(Ordering::Acquire));
        assert!(graceful.tx.send(()).is_ok());
        assert!(watched.signal.fired.load(Ordering::Acquire));
        assert_eq!(watched.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
    }

    #[tokio::test]
    async fn shutdown_with_no_connection_returns_at_once() {
        Graceful::new().shutdown().await;
    }
}
