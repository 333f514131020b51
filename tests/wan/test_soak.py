"""The soak's per-subscriber checks (make soak), in memory: a group's reset travels on that group's
own QUIC stream, so it can reach the subscriber after a newer group's first object; that is a
signalled skip, while a group no signal ever names is a violation."""

from rtmpq.media.frames import Frame

from tests.wan.soak import SIGNAL_GRACE, SubscriberCheck


def video(group: int, index: int) -> Frame:
    return Frame("video", group, index, group * 1000 + index, group * 1000 + index, index == 0, b"x")


def test_a_reset_that_arrives_after_the_newer_group_is_a_signalled_skip():
    check = SubscriberCheck("bursty")
    check.frame(video(7, 0), 0.0)
    check.frame(video(7, 1), 0.1)
    check.frame(video(9, 0), 1.0)  # group 8's stream was reset; its RESET_STREAM was lost and is resent
    check.skipped("video", 8, 1.2)
    check.frame(video(9, 1), 1.3)
    check.leave(30.0)
    assert check.violations == [] and check.late_signals == 1


def test_a_group_whose_stream_starts_after_the_newer_one_is_not_missing():
    check = SubscriberCheck("bursty")
    check.frame(video(7, 0), 0.0)
    check.frame(video(9, 0), 1.0)
    check.frame(video(8, 0), 1.1)  # group 8's first packet was lost and came again
    check.leave(30.0)
    assert check.violations == []


def test_a_group_never_signalled_is_a_violation():
    check = SubscriberCheck("bursty")
    check.frame(video(7, 0), 0.0)
    check.frame(video(10, 0), 1.0)
    check.skipped("video", 8, 1.2)
    check.leave(1.0 + SIGNAL_GRACE + 0.1)
    assert check.violations == ["bursty: video group 9 missing, unsignalled"]


def test_a_subscriber_leaving_right_after_the_gap_is_not_judged_on_it():
    check = SubscriberCheck("clean")
    check.frame(video(7, 0), 0.0)
    check.frame(video(9, 0), 10.0)
    check.leave(10.5)
    assert check.violations == [] and check.undecided == 1


def test_objects_out_of_order_and_groups_not_on_a_keyframe_are_violations():
    check = SubscriberCheck("clean")
    check.frame(video(7, 0), 0.0)
    check.frame(video(7, 2), 0.1)
    check.frame(Frame("video", 8, 0, 8000, 8000, False, b"x"), 1.0)
    assert check.violations == ["clean: video group 7 object 2 after 0", "clean: video group 8 starts on a non-IDR"]
