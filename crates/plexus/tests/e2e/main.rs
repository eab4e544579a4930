//! End-to-end tests: real `plexus` processes talking over loopback sockets.

mod chain;
mod paid;
mod serve;
mod upgrade;
mod util;
