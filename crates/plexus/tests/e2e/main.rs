//! End-to-end tests: real `plexus` processes talking over loopback sockets.

mod attack;
mod badinput;
mod chain;
mod console;
mod edge;
mod join;
mod metering;
mod netns;
mod ops;
mod paid;
mod serve;
mod setup;
mod stream;
mod tls;
mod upgrade;
mod util;
mod verify;
