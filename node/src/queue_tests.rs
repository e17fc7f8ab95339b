use super::*;
use bytes::BufMut;

use crate::wire::FrameDecoder;

fn joined(t: Option<Taken>) -> Vec<u8> {
    t.expect("something queued").parts.concat()
}

fn ev(q: &SendQueue, name: &str, len: usize) -> Result<Pushed, PushError> {
    let payload = Bytes::from(vec![7u8; len]);
    q.push_event(name, &payload, wire::event_frame_len(name, &payload))
}

/// The frames of a lane's bytes: (name, payload length) for events,
/// (`"after"`, count) for barriers.
fn frames(t: Option<Taken>) -> Vec<(String, usize)> {
    let mut b = BytesMut::new();
    wire::put_preamble(&mut b);
    b.extend_from_slice(&joined(t));
    let mut dec = FrameDecoder::new(1 << 24);
    dec.push(b.freeze());
    let mut out = Vec::new();
    while let Some(body) = dec.next_frame().unwrap() {
        out.push(match wire::parse(&body).unwrap() {
            Frame::Event { name, payload } => (name.to_owned(), payload.len()),
            Frame::After { other } => ("after".to_owned(), other as usize),
            f => panic!("unexpected {f:?}"),
        });
    }
    out
}

#[tokio::test]
async fn bounded_and_fifo() {
    let q = SendQueue::new(100, 0);
    ev(&q, "a", 40).unwrap();
    assert_eq!(ev(&q, "a", 40), Err(PushError::Full));
    ev(&q, "a", 10).unwrap();
    assert_eq!(frames(q.take(Lane::Bulk).await), vec![("a".into(), 40), ("a".into(), 10)]);
    // An empty queue accepts one oversized frame.
    ev(&q, "a", 200).unwrap();
    assert_eq!(ev(&q, "a", 1), Err(PushError::Full));
    q.push_control(|b| b.put_u8(9)).unwrap();
    assert!(joined(q.take(Lane::Bulk).await).len() > 201);
    ev(&q, "a", 1).unwrap();
    q.finish();
    assert_eq!(frames(q.take(Lane::Bulk).await).len(), 1);
    assert_eq!(q.take(Lane::Bulk).await, None);
    assert_eq!(q.take(Lane::Express).await, None);
    assert_eq!(ev(&q, "a", 1), Err(PushError::Closed));
}

#[tokio::test]
async fn large_payloads_are_queued_by_reference_in_order() {
    let q = SendQueue::new(1 << 20, 0);
    let tail = Bytes::from(vec![9u8; BY_REFERENCE]);
    ev(&q, "x", 2).unwrap();
    q.push_event("y", &tail, wire::event_frame_len("y", &tail)).unwrap();
    ev(&q, "z", 2).unwrap();
    let t = q.take(Lane::Bulk).await.unwrap();
    assert!(t.parts.iter().any(|p| p.as_ptr() == tail.as_ptr()), "the payload itself, not a copy");
    assert_eq!(t.events, 3);
    assert_eq!(frames(Some(t)), vec![("x".into(), 2), ("y".into(), BY_REFERENCE), ("z".into(), 2)]);
    assert_eq!(q.queued_bytes(), 0);
}

#[tokio::test]
async fn batch_ready_once_per_batch() {
    let q = SendQueue::new(4 * BATCH, 0);
    let mut ready_at = Vec::new();
    let n = 3 * BATCH / 1000;
    for i in 0..n {
        if ev(&q, "b", 1000 - 20).unwrap().batch_ready {
            ready_at.push(i);
        }
    }
    // Only the frame that crosses BATCH says so, not every one after it.
    assert_eq!(ready_at.len(), 1, "{ready_at:?}");
    assert!(joined(q.take(Lane::Bulk).await).len() >= 2 * BATCH);
    assert!(!ev(&q, "b", 980).unwrap().batch_ready);
}

#[tokio::test]
async fn waiting_emitter_wakes_when_writer_takes() {
    let q = std::sync::Arc::new(SendQueue::new(50, 0));
    ev(&q, "full", 40).unwrap();
    let q2 = q.clone();
    let waiter = tokio::spawn(async move {
        loop {
            let n = q2.space_notified();
            match ev(&q2, "next", 40) {
                Ok(_) => return,
                Err(PushError::Full) => n.await,
                Err(PushError::Closed) => panic!("closed"),
            }
        }
    });
    tokio::task::yield_now().await;
    assert_eq!(frames(q.take(Lane::Bulk).await), vec![("full".into(), 40)]);
    waiter.await.unwrap();
    assert_eq!(frames(q.take(Lane::Bulk).await), vec![("next".into(), 40)]);
}

#[tokio::test]
async fn small_events_take_the_express_lane_and_its_reserve() {
    // Limit 4000: the bulk lane may fill 3000, the express lane the rest.
    let q = SendQueue::new(4000, 100);
    ev(&q, "big", 2000).unwrap();
    assert_eq!(ev(&q, "big", 1000), Err(PushError::Full), "past the bulk lane's share");
    // A small event of another name still fits, on the express lane.
    ev(&q, "ping", 10).unwrap();
    assert_eq!(frames(q.try_take(Lane::Express)), vec![("ping".into(), 10)]);
    // The express lane alone is bounded by the whole limit.
    let mut n = 0;
    while ev(&q, "ping", 10).is_ok() {
        n += 1;
        assert!(n < 1000);
    }
    assert!(q.queued_bytes() <= 4000, "{}", q.queued_bytes());
    assert!(q.queued_bytes() > 3900, "{}", q.queued_bytes());
}

#[tokio::test]
async fn a_name_with_a_big_event_keeps_its_order() {
    let q = SendQueue::new(1 << 20, 100);
    ev(&q, "m", 10).unwrap(); // express 1
    ev(&q, "m", 500).unwrap(); // bulk 1, behind express 1
    ev(&q, "m", 10).unwrap(); // pinned: bulk 2, behind the big one
    ev(&q, "other", 10).unwrap(); // express 2: overtakes
    assert_eq!(frames(q.try_take(Lane::Express)), vec![("m".into(), 10), ("other".into(), 10)]);
    let t = q.try_take(Lane::Bulk).unwrap();
    assert_eq!(t.events, 2);
    // Taken but not written: the bulk lane is busy, "m" stays pinned.
    ev(&q, "m", 10).unwrap(); // bulk 3
    assert!(q.try_take(Lane::Express).is_none());
    assert_eq!(frames(Some(t)), vec![("after".into(), 1), ("m".into(), 500), ("m".into(), 10)]);
    let t = q.try_take(Lane::Bulk).unwrap();
    q.written(Lane::Bulk, t.events);
    // Idle now: "m" goes express behind a barrier naming all 3 bulk events.
    ev(&q, "m", 10).unwrap(); // express 3
    ev(&q, "m", 10).unwrap(); // express 4: no second barrier
    assert_eq!(frames(q.try_take(Lane::Express)), vec![("after".into(), 3), ("m".into(), 10), ("m".into(), 10)]);
    // A big event now waits for the 4 express events.
    ev(&q, "m", 500).unwrap();
    ev(&q, "n", 500).unwrap();
    assert_eq!(frames(q.try_take(Lane::Bulk)), vec![("after".into(), 4), ("m".into(), 500), ("n".into(), 500)]);
}

#[tokio::test]
async fn too_many_pinned_names_pin_every_name() {
    let q = SendQueue::new(1 << 24, 100);
    for i in 0..=MAX_PINNED {
        ev(&q, &format!("big{i}"), 200).unwrap();
    }
    // Never seen big, yet pinned: the set overflowed.
    ev(&q, "fresh", 10).unwrap();
    assert!(q.try_take(Lane::Express).is_none());
    let t = q.try_take(Lane::Bulk).unwrap();
    q.written(Lane::Bulk, t.events);
    // The bulk lane idles: everything is unpinned (behind a barrier).
    ev(&q, "fresh", 10).unwrap();
    ev(&q, "fresh2", 10).unwrap();
    let f = frames(q.try_take(Lane::Express));
    assert_eq!(f[0], ("after".into(), MAX_PINNED + 2));
    assert_eq!(f.len(), 3);
}

#[tokio::test]
async fn express_off_means_one_lane() {
    let q = SendQueue::new(1 << 20, 0);
    ev(&q, "a", 1).unwrap();
    ev(&q, "a", 5000).unwrap();
    assert!(q.try_take(Lane::Express).is_none());
    assert_eq!(frames(q.try_take(Lane::Bulk)), vec![("a".into(), 1), ("a".into(), 5000)]);
}
