//! The annotation checks of Istio's injector (`pkg/kube/inject/validate.go`), refused where
//! Istio refuses, plus one meshrev adds: no control characters in any value that is written
//! into the sidecar (they could reach istio-iptables' arguments or the proxy's command line).

use super::pod::Meta;

type Check = fn(&str) -> Result<(), String>;

const CHECKS: [(&str, Check); 15] = [
    (
        crate::core::ANNOTATION_TEMPLATES,
        super::templates::validate,
    ),
    ("sidecar.istio.io/interceptionMode", interception_mode),
    ("status.sidecar.istio.io/port", port),
    (
        "readiness.status.sidecar.istio.io/initialDelaySeconds",
        uint32,
    ),
    ("readiness.status.sidecar.istio.io/periodSeconds", uint32),
    ("readiness.status.sidecar.istio.io/failureThreshold", uint32),
    (
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        include_ip_ranges,
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        cidr_list,
    ),
    (
        "traffic.sidecar.istio.io/includeInboundPorts",
        include_ports,
    ),
    ("traffic.sidecar.istio.io/excludeInboundPorts", port_list),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", port_list),
    ("traffic.sidecar.istio.io/excludeInterfaces", interfaces),
    ("traffic.sidecar.istio.io/kubevirtInterfaces", interfaces),
    ("istio.io/reroute-virtual-interfaces", interfaces),
    ("prometheus.istio.io/merge-metrics", boolean),
];

/// The proxy's resources: Istio checks that each is a quantity (a sign allowed). meshrev
/// also refuses a negative one, which the API server would refuse in the pod, but only
/// when an applied template writes it (`sidecar`, `grpc-agent`): the gateway and
/// grpc-simple templates never read them, and Istio injects those pods.
const PROXY_RESOURCES: [&str; 4] = [
    "sidecar.istio.io/proxyCPU",
    "sidecar.istio.io/proxyMemory",
    "sidecar.istio.io/proxyCPULimit",
    "sidecar.istio.io/proxyMemoryLimit",
];

/// Annotations that are written into the sidecar as they are.
const VERBATIM: [&str; 5] = [
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "sidecar.istio.io/proxyImage",
    "sidecar.istio.io/logLevel",
    "sidecar.istio.io/componentLogLevel",
    "sidecar.istio.io/agentLogLevel",
];

/// Checks every annotation Istio checks. The error names the annotation and its value.
pub(crate) fn annotations(meta: &Meta<'_>) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut apply = |key: &str, check: Check| {
        if let Some(v) = meta.annotation(key)
            && let Err(e) = no_control(v).and_then(|()| check(v))
        {
            errors.push(format!("annotation {key}: {v:?}: {e}"));
        }
    };
    for (key, check) in CHECKS {
        apply(key, check);
    }
    if PROXY_RESOURCES.iter().any(|k| meta.annotation(k).is_some()) {
        let written = super::templates::read_proxy_annotations(
            meta.annotation(crate::core::ANNOTATION_TEMPLATES),
        );
        for key in PROXY_RESOURCES {
            apply(key, if written { quantity } else { signed_quantity });
        }
    }
    for key in VERBATIM {
        if let Some(v) = meta.annotation(key)
            && let Err(e) = no_control(v)
        {
            errors.push(format!("annotation {key}: {v:?}: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn no_control(v: &str) -> Result<(), String> {
    match v
        .chars()
        .find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        Some(c) => Err(format!("contains the control character {c:?}")),
        None => Ok(()),
    }
}

fn interception_mode(v: &str) -> Result<(), String> {
    match v {
        "REDIRECT" | "TPROXY" | "NONE" => Ok(()),
        _ => Err("interceptionMode invalid, use REDIRECT, TPROXY or NONE".into()),
    }
}

/// Go's `strconv.ParseUint(strings.TrimSpace(v), 10, 16)`.
fn port(v: &str) -> Result<(), String> {
    let t = v.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && t.parse::<u16>().is_ok() {
        Ok(())
    } else {
        Err(format!("{t:?} is not a port (0-65535)"))
    }
}

fn port_list(v: &str) -> Result<(), String> {
    let t = v.trim();
    if t.is_empty() {
        return Ok(());
    }
    t.split(',').try_for_each(port)
}

fn include_ports(v: &str) -> Result<(), String> {
    if v == "*" { Ok(()) } else { port_list(v) }
}

fn uint32(v: &str) -> Result<(), String> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.parse::<u32>().is_ok() {
        Ok(())
    } else {
        Err("not an unsigned 32-bit integer".into())
    }
}

fn boolean(v: &str) -> Result<(), String> {
    super::parse_go_bool(v)
        .map(|_| ())
        .ok_or_else(|| "not a boolean (true or false)".into())
}

/// Istio's check (`resource.ParseQuantity`): a quantity, with or without a sign.
fn signed_quantity(v: &str) -> Result<(), String> {
    if crate::core::validate::go_quantity(v) {
        Ok(())
    } else {
        Err("not a Kubernetes quantity (e.g. 100m, 128Mi)".into())
    }
}

fn quantity(v: &str) -> Result<(), String> {
    if crate::core::validate::non_negative_quantity(v).is_ok() {
        Ok(())
    } else {
        Err("not a non-negative Kubernetes quantity (e.g. 100m, 128Mi)".into())
    }
}

fn include_ip_ranges(v: &str) -> Result<(), String> {
    if v == "*" { Ok(()) } else { cidr_list(v) }
}

/// Go's `netip.ParsePrefix` on each comma-separated entry: an address and a prefix length,
/// no spaces.
fn cidr_list(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    for c in v.split(',') {
        let ok = c.split_once('/').is_some_and(|(ip, bits)| {
            let bits_ok = |max: u8| {
                !bits.is_empty()
                    && bits.len() <= 3
                    && bits.bytes().all(|b| b.is_ascii_digit())
                    && (bits == "0" || !bits.starts_with('0'))
                    && bits.parse::<u8>().is_ok_and(|b| b <= max)
            };
            match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => bits_ok(32),
                Ok(std::net::IpAddr::V6(_)) => bits_ok(128),
                Err(_) => false,
            }
        });
        if !ok {
            return Err(format!("{c:?} is not a CIDR (address/bits)"));
        }
    }
    Ok(())
}

/// Linux interface names: 1-15 bytes, no '/', ':' or white space.
fn interfaces(v: &str) -> Result<(), String> {
    for i in v.split(',') {
        let ok = !i.is_empty()
            && i.len() <= 15
            && !i.contains(['/', ':'])
            && !i.chars().any(char::is_whitespace);
        if !ok {
            return Err(format!("{i:?} is not a network interface name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_refusals() {
        assert!(cidr_list("*").is_err(), "exclude ranges take no wildcard");
        assert!(include_ip_ranges("*").is_ok());
        assert!(cidr_list("10.0.0.1").is_err(), "a prefix needs its length");
        assert!(cidr_list("10.0.0.0/8,::1/128").is_ok());
        assert!(port_list("*").is_err());
        assert!(include_ports("*").is_ok());
        assert!(port_list(" 80, 443 ").is_ok());
        assert!(port_list("70000").is_err());
        assert!(no_control("a\nb").is_err());
        assert!(no_control("a\u{2028}b").is_err());
        assert!(quantity("-1").is_err());
    }
}
