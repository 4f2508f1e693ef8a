//! Pure logic behind pipelined writes: cutting ops into batches and matching
//! the kernel's acks back to the ops that caused them.
//!
//! A batch is one datagram holding many requests, each with NLM_F_ACK. The
//! kernel executes them in order and answers each with an NLMSG_ERROR (code
//! 0 = ack) carrying the request's sequence number. netlink-proto numbers the
//! messages of one batch consecutively, so an ack's offset from the lowest
//! sequence number of the batch is the index of its op.

/// Cut ops (given by their encoded sizes) into consecutive batches of at
/// most `window` messages and, unless a single message is larger, at most
/// `max_bytes` bytes. Order is preserved. `Client::apply` makes the same cuts
/// incrementally, with [`starts_new_batch`].
#[cfg(test)]
pub(crate) fn plan_batches(
    sizes: &[usize],
    window: usize,
    max_bytes: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, size) in sizes.iter().enumerate() {
        if starts_new_batch(i - start, bytes, *size, window, max_bytes) {
            batches.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

/// Whether a message of `size` bytes must open a new batch, given that the
/// current batch holds `count` messages of `bytes` bytes in total.
pub(crate) fn starts_new_batch(
    count: usize,
    bytes: usize,
    size: usize,
    window: usize,
    max_bytes: usize,
) -> bool {
    count > 0 && (count >= window.max(1) || bytes + size > max_bytes)
}

/// Map the acks of one batch of `n` requests to per-request error codes
/// (0 = success, negative errno otherwise), in request order.
///
/// `acks` holds `(sequence number, code)` for every NLMSG_ERROR received, in
/// any order. `complete` says whether netlink-proto closed the reply stream
/// (every request answered) rather than us giving up waiting.
///
/// Only an exact match is trusted: if an ack is missing (lost to a buffer
/// overrun, connection closed, timeout) the base sequence number is no
/// longer certain, and guessing could report a failed op as applied. The
/// caller then reports every op of the batch as outcome-unknown.
pub(crate) fn match_acks(
    n: usize,
    acks: &[(u32, i32)],
    complete: bool,
) -> Result<Vec<i32>, String> {
    if acks.len() != n || !complete {
        return Err(format!(
            "{} of {n} acknowledgements received{}",
            acks.len(),
            if complete { "" } else { " before the deadline" }
        ));
    }
    let Some(base) = acks.iter().map(|(seq, _)| *seq).min() else {
        return Ok(Vec::new());
    };
    let mut codes: Vec<Option<i32>> = vec![None; n];
    for (seq, code) in acks {
        let slot = usize::try_from(seq - base)
            .ok()
            .and_then(|i| codes.get_mut(i))
            .ok_or_else(|| "acknowledgement sequence numbers are not contiguous".to_string())?;
        if slot.replace(*code).is_some() {
            return Err(format!(
                "duplicate acknowledgement for sequence number {seq}"
            ));
        }
    }
    // n acks, each in 0..n and no duplicates: every slot is filled.
    Ok(codes.into_iter().map(|c| c.unwrap_or(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_window_and_bytes() {
        assert_eq!(plan_batches(&[10; 5], 2, 1000), vec![0..2, 2..4, 4..5]);
        assert_eq!(plan_batches(&[10; 5], 256, 25), vec![0..2, 2..4, 4..5]);
        // An oversized message still goes out, alone.
        assert_eq!(
            plan_batches(&[10, 100, 10], 256, 50),
            vec![0..1, 1..2, 2..3]
        );
        assert_eq!(
            plan_batches(&[], 256, 50),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert_eq!(plan_batches(&[1; 3], 0, 50), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn acks_map_by_sequence_not_arrival() {
        let acks = [(12, -17), (10, 0), (13, 0), (11, -3)];
        assert_eq!(match_acks(4, &acks, true), Ok(vec![0, -3, -17, 0]));
    }

    #[test]
    fn missing_or_odd_acks_are_not_guessed() {
        assert!(match_acks(3, &[(5, 0), (6, 0)], true).is_err());
        assert!(match_acks(2, &[(5, 0), (6, 0)], false).is_err());
        assert!(match_acks(2, &[(5, 0), (7, 0)], true).is_err());
        assert!(match_acks(2, &[(5, 0), (5, 0)], true).is_err());
        assert_eq!(match_acks(0, &[], true), Ok(vec![]));
    }
}
