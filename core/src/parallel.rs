//! Parallel codes (`n=<N>=n<rest>`) and the split of files over N sessions.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::Error;

/// Most connections a parallel code may ask for.
pub const MAX_PARALLEL: usize = 64;

/// The number of connections a code asks for, parsed exactly as p2p-copy 0.1.2 does: a
/// code that starts with `n=` and contains `=n`, with only ASCII digits between them,
/// asks for that many (0 counts as 1); anything else asks for 1.
///
/// # Errors
/// [`Error::Config`] when the number exceeds [`MAX_PARALLEL`].
pub fn connection_count(code: &str) -> Result<usize, Error> {
    let Some(rest) = code.strip_prefix("n=") else {
        return Ok(1);
    };
    let Some(end) = code.find("=n") else {
        return Ok(1);
    };
    let digits = if end >= 2 { &rest[..end - 2] } else { "" };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(1);
    }
    let too_many = || {
        Error::Config(format!(
            "the code asks for {digits} parallel connections; at most {MAX_PARALLEL} are allowed"
        ))
    };
    let n: usize = digits.parse().map_err(|_| too_many())?;
    if n > MAX_PARALLEL {
        return Err(too_many());
    }
    Ok(n.max(1))
}

/// The code of each session: the code itself for one connection, else `<i>` + code for
/// connection i.
///
/// # Errors
/// As [`connection_count`].
pub fn session_codes(code: &str) -> Result<Vec<String>, Error> {
    let n = connection_count(code)?;
    if n == 1 {
        return Ok(vec![code.to_owned()]);
    }
    Ok((0..n).map(|i| format!("{i}{code}")).collect())
}

/// Split files over `n` sessions as the reference does: stable sort by size, largest
/// first, then each file to the session with the fewest bytes so far (lowest index on a
/// tie). Returns, per session, indices into `sizes` in sending order. With `n` = 1 this
/// is still the size-descending order the reference sends in.
pub fn split_by_size(sizes: &[u64], n: usize) -> Vec<Vec<usize>> {
    let n = n.max(1);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| Reverse(sizes[i]));
    let mut groups = vec![Vec::new(); n];
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..n).map(|i| Reverse((0, i))).collect();
    for i in order {
        // The heap holds exactly n entries and each pop is followed by a push.
        let Reverse((sum, g)) = heap.pop().expect("heap holds n groups");
        groups[g].push(i);
        heap.push(Reverse((sum + sizes[i], g)));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_reference_parser() {
        assert_eq!(connection_count("secret").unwrap(), 1);
        assert_eq!(connection_count("n=4=nsecret").unwrap(), 4);
        assert_eq!(connection_count("n=0=nx").unwrap(), 1);
        assert_eq!(connection_count("n=x=nx").unwrap(), 1);
        assert_eq!(connection_count("n==nx").unwrap(), 1);
        assert_eq!(connection_count("n=n").unwrap(), 1);
        assert_eq!(connection_count("n=3").unwrap(), 1);
        assert!(connection_count("n=65=nx").is_err());
        assert!(connection_count("n=99999999999999999999999=nx").is_err());
    }

    #[test]
    fn session_codes_prefix_the_index() {
        assert_eq!(session_codes("n=2=ns").unwrap(), ["0n=2=ns", "1n=2=ns"]);
        assert_eq!(session_codes("n=0=ns").unwrap(), ["n=0=ns"]);
    }

    #[test]
    fn split_is_greedy_largest_first() {
        let sizes = [1, 10, 5, 5, 0];
        assert_eq!(split_by_size(&sizes, 1), vec![vec![1, 2, 3, 0, 4]]);
        assert_eq!(split_by_size(&sizes, 2), vec![vec![1, 0], vec![2, 3, 4]]);
        assert_eq!(
            split_by_size(&sizes, 4),
            vec![vec![1], vec![2], vec![3], vec![0, 4]]
        );
    }
}
