//! Resource quantities (`100m`, `0.5`, `128Mi`, `1G`, `2e3`) parsed into thousandths of a unit, so
//! cpu (millicores) and memory (bytes × 1000) add and compare exactly, as quota accounting needs.

/// A quantity in thousandths of its unit.
pub type Milli = i128;

/// Parses a Kubernetes quantity; the error is Kubernetes' text.
pub fn parse(s: &str) -> Result<Milli, String> {
    let err = || {
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".to_string()
    };
    let s = s.trim();
    if s.is_empty() {
        return Err(err());
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num == "+" || num == "-" {
        return Err(err());
    }
    let (neg, digits) = match num.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, num.strip_prefix('+').unwrap_or(num)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.chars().all(|c| c.is_ascii_digit())
        || !frac_part.chars().all(|c| c.is_ascii_digit())
    {
        return Err(err());
    }
    // value = mantissa / 10^scale, in units; the suffix multiplies by 2^x or 10^x.
    let mantissa: i128 = format!("{int_part}{frac_part}")
        .trim_start_matches('0')
        .parse::<i128>()
        .or_else(|e| {
            if int_part.chars().chain(frac_part.chars()).all(|c| c == '0') {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .map_err(|_| err())?;
    let scale = frac_part.len() as i32;
    let (binary, exp10): (Option<u32>, i32) = match suffix {
        "" => (None, 0),
        "Ki" => (Some(10), 0),
        "Mi" => (Some(20), 0),
        "Gi" => (Some(30), 0),
        "Ti" => (Some(40), 0),
        "Pi" => (Some(50), 0),
        "Ei" => (Some(60), 0),
        "n" => (None, -9),
        "u" => (None, -6),
        "m" => (None, -3),
        "k" => (None, 3),
        "M" => (None, 6),
        "G" => (None, 9),
        "T" => (None, 12),
        "P" => (None, 15),
        "E" => (None, 18),
        s if s.starts_with(['e', 'E']) => (None, s[1..].parse::<i32>().map_err(|_| err())?),
        _ => return Err(err()),
    };
    let mut value: i128 = mantissa.checked_mul(1000).ok_or_else(err)?;
    if let Some(shift) = binary {
        value = value.checked_mul(1i128 << shift).ok_or_else(err)?;
    }
    let exp = exp10 - scale;
    if exp >= 0 {
        value = value
            .checked_mul(10i128.checked_pow(exp as u32).ok_or_else(err)?)
            .ok_or_else(err)?;
    } else {
        let div = 10i128.checked_pow((-exp) as u32).ok_or_else(err)?;
        // Kubernetes rounds up to the smallest representable unit.
        value = (value + div - 1) / div;
    }
    Ok(if neg { -value } else { value })
}

/// Formats thousandths back into a quantity string (`250m`, `2`, `1Gi` for exact binary sizes).
pub fn format(m: Milli, binary: bool) -> String {
    if m % 1000 != 0 {
        return format!("{m}m");
    }
    let units = m / 1000;
    if binary && units != 0 {
        for (suffix, shift) in [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ] {
            let f = 1i128 << shift;
            if units % f == 0 {
                return format!("{}{suffix}", units / f);
            }
        }
    }
    units.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse("100m"), Ok(100));
        assert_eq!(parse("0.5"), Ok(500));
        assert_eq!(parse("2"), Ok(2000));
        assert_eq!(parse("128Mi"), Ok(128 * 1024 * 1024 * 1000));
        assert_eq!(parse("1G"), Ok(1_000_000_000_000));
        assert_eq!(parse("2e3"), Ok(2_000_000));
        assert_eq!(parse("1.5Gi"), Ok(1536 * 1024 * 1024 * 1000));
        assert!(parse("abc").is_err());
        assert!(parse("1Xi").is_err());
        assert_eq!(format(250, false), "250m");
        assert_eq!(format(parse("1Gi").unwrap(), true), "1Gi");
    }
}
