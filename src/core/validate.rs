//! Validation of the values meshrev is given: revision and tag names, versions, image
//! references, Kubernetes quantities, durations. One rule each, used by the table builder,
//! the upgrade guards, the CLI and the injector.

use std::time::Duration;

use super::Error;

/// Revision and tag names are label values (they appear in `istio.io/rev`) and DNS labels.
pub(crate) fn name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Name(name.to_string()))
    }
}

/// A revision's version: `1.23.6`, a leading `v` allowed.
pub(crate) fn version(v: &str) -> Result<semver::Version, Error> {
    semver::Version::parse(v.trim_start_matches('v')).map_err(|e| Error::Version {
        version: v.to_string(),
        reason: e.to_string(),
    })
}

/// A container image reference, as far as meshrev checks one: not empty, no whitespace.
/// (The registry decides the rest when the kubelet pulls it.)
pub(crate) fn image(image: &str) -> Result<(), Error> {
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        Err(Error::Image(image.to_string()))
    } else {
        Ok(())
    }
}

/// A Kubernetes resource quantity (`100m`, `1.5`, `128Mi`, `1e3`; a sign allowed).
pub(crate) fn quantity(q: &str) -> Result<(), Error> {
    if is_quantity(q) {
        Ok(())
    } else {
        Err(Error::Quantity(q.to_string()))
    }
}

/// A quantity that is not negative (what a container's resources may be).
pub(crate) fn non_negative_quantity(q: &str) -> Result<(), Error> {
    if is_quantity(q) && !q.starts_with('-') {
        Ok(())
    } else {
        Err(Error::Quantity(q.to_string()))
    }
}

/// Whether Kubernetes' own parser (`resource.ParseQuantity`, apimachinery) accepts `q`:
/// what Istio's injector checks an annotation against, and what the API server accepts in
/// a pod. Looser than [`is_quantity`]: a lone sign, `.` or suffix reads as zero (`-`, `.`,
/// `m`).
pub(crate) fn go_quantity(q: &str) -> bool {
    if q.is_empty() {
        return false;
    }
    let b = q.as_bytes();
    let mut pos = usize::from(matches!(b[0], b'+' | b'-'));
    let digits = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    // Leading zeros, then the numerator; all digits (or nothing) after the sign is zero.
    pos = digits(pos);
    if pos == b.len() {
        return true;
    }
    if b[pos] == b'.' {
        pos = digits(pos + 1);
    }
    // The suffix: letters of "eEinumkKMGTP", then an optional sign and digits (an exponent).
    let suffix = &q[pos..];
    let letters = pos
        + b[pos..]
            .iter()
            .take_while(|c| b"eEinumkKMGTP".contains(c))
            .count();
    let mut end = letters;
    if end < b.len() && matches!(b[end], b'+' | b'-') {
        end += 1;
    }
    if digits(end) != b.len() {
        return false;
    }
    matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || (suffix.len() > 1 && suffix.starts_with(['e', 'E']) && suffix[1..].parse::<i64>().is_ok())
}

/// Whether `q` is a Kubernetes resource quantity (`100m`, `1.5`, `128Mi`, `1e3`): what
/// [`go_quantity`] accepts, with a digit required before the suffix (no `-`, `.` or `m`
/// alone).
pub(crate) fn is_quantity(q: &str) -> bool {
    go_quantity(q)
        && q.trim_start_matches(['+', '-'])
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.')
            .any(|c| c.is_ascii_digit())
}

/// A Kubernetes quantity's value in its base unit (cores, bytes): `500m` → 0.5,
/// `1Gi` → 1073741824. `None` when it is not a quantity. The injector calls it per request
/// (request above limit); it does not allocate.
pub fn quantity_value(q: &str) -> Option<f64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

/// A duration: a plain number of seconds (`90`, `1.5`), or one or more number-unit pairs
/// with units `ms`, `s`, `m`, `h` (`500ms`, `5s`, `10m`, `1h30m`, `1.5s`), as Go's
/// `time.ParseDuration` spells them. Spaces around the whole and between a number and its
/// unit are allowed. One grammar for every flag and field that takes a duration.
pub(crate) fn duration(s: &str) -> Result<Duration, Error> {
    let err = || Error::Duration(s.to_string());
    let t = s.trim();
    if t.is_empty() {
        return Err(err());
    }
    let number = |n: &str| -> Result<f64, Error> {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(err());
        }
        n.parse::<f64>().map_err(|_| err())
    };
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Duration::try_from_secs_f64(number(t)?).map_err(|_| err());
    }
    let mut secs = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n = number(&rest[..end])?;
        rest = rest[end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        secs += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["1-23-6", "stable", "a"] {
            assert!(name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", &"x".repeat(64)] {
            assert!(name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(version("v1.23.6").unwrap(), semver::Version::new(1, 23, 6));
        let e = version("one").unwrap_err().to_string();
        assert!(e.contains("\"one\"") && e.contains("1.23.6"), "{e}");
    }

    #[test]
    fn images() {
        assert!(image("docker.io/istio/proxyv2:1.23.6").is_ok());
        assert!(image("").is_err());
        assert!(image("a b").is_err());
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "1", "1.5", "128Mi", "1e3", "2Gi", "0.5"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "lots", "1.2.3", "10mb", "1e"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        assert!(is_quantity("250u") && is_quantity("5n"));
        assert_eq!(quantity_value("250u"), Some(250e-6));
    }

    /// Cases read off apimachinery's `parseQuantityString` and `ParseQuantity`.
    #[test]
    fn go_quantities_as_kubernetes_parses_them() {
        for ok in [
            "100m", "1", "1.5", "128Mi", "1e3", "2Gi", "0.5", "-1", "+1", "-", "+", ".", "m",
            "000", "-000", "1.", "1.G", "5n", "250u", "1E-3", "1e+3", "1Ei", ".5",
        ] {
            assert!(go_quantity(ok), "{ok}");
        }
        for bad in [
            "", "lots", "1.2.3", "10mb", "1e", "1Mb", "1 m", "1m1", "--1", "1e3.5", "x",
        ] {
            assert!(!go_quantity(bad), "{bad}");
        }
        assert!(quantity("-1").is_ok());
        assert!(non_negative_quantity("-1").is_err());
        assert_eq!(quantity_value("500m"), Some(0.5));
        assert_eq!(quantity_value("1Gi"), Some(1073741824.0));
    }

    #[test]
    fn durations_in_one_grammar() {
        let d = |s| duration(s).unwrap();
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("100ms"), Duration::from_millis(100));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("1.5"), Duration::from_millis(1500));
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("90"), Duration::from_secs(90));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d(" 5 s "), Duration::from_secs(5));
        assert_eq!(d("1m500ms"), Duration::from_millis(60_500));
        for bad in ["", "5 parsecs", "10x", "m", "1.2.3s", "-1s", "s5", "1e3"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
        let e = duration("10x").unwrap_err().to_string();
        assert!(e.contains("\"10x\"") && e.contains("90s"), "{e}");
    }
}
