"""Development tools shipped with kubejoin: a local cluster issuer, loopback TLS, the demo and the
load generator. The service never imports them."""
