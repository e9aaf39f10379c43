//! The roomcast binary: parse flags, bind, serve until SIGTERM.

use roomcast::config::Config;
use roomcast::log;
use roomcast::server::Server;

fn main() {
    let config = Config::load();
    log::set_level(config.log_level);
    // A panic is a bug; it is logged like everything else, as one JSON
    // line, whether or not the loop survives it.
    std::panic::set_hook(Box::new(|info| {
        log::error("panic", &[("detail", info.to_string().into())]);
    }));
    let server = match Server::bind(&config) {
        Ok(server) => server,
        Err(e) => {
            log::error(
                "cannot start",
                &[
                    ("error", e.to_string().into()),
                    ("host", config.host.clone().into()),
                    ("port", config.port.into()),
                ],
            );
            std::process::exit(1);
        }
    };
    let address = server
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut fields = vec![
        ("address", address.into()),
        ("instance", config.instance_id.clone().into()),
        ("version", env!("CARGO_PKG_VERSION").into()),
        (
            "maxConnectionAgeSeconds",
            config.max_connection_age.as_secs().into(),
        ),
    ];
    fields.extend(config.deployment().log_fields());
    log::info("listening", &fields);
    if let Err(e) = server.run() {
        log::error("event loop failed", &[("error", e.to_string().into())]);
        std::process::exit(1);
    }
}
