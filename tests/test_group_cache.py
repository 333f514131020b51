from rtmpq.moq.group_cache import GroupCache


def fill(cache, group, objects, size=100, now=0.0):
    for i in range(objects):
        cache.add(group, i, bytes(size), None, now)


def test_new_subscriber_gets_the_newest_group_from_its_first_object():
    cache = GroupCache()
    fill(cache, 0, 30)
    fill(cache, 1, 5)
    latest = cache.latest(0.0)
    assert latest.group_id == 1 and [o.object_id for o in latest.objects] == [0, 1, 2, 3, 4]
    assert not latest.complete and cache.groups_from(0, 0.0)[0].complete
    assert cache.largest == (1, 4)


def test_bounded_by_bytes_keeps_the_newest_group():
    cache = GroupCache(max_bytes=10_000)
    for g in range(10):
        fill(cache, g, 30, size=100)  # 3000 bytes a group
    assert cache.size <= 10_000
    assert [g.group_id for g in cache.groups_from(0, 0.0)] == [7, 8, 9]


def test_a_group_too_big_for_the_cache_is_not_cached_but_memory_stays_bounded():
    cache = GroupCache(max_bytes=5_000)
    fill(cache, 0, 10, size=100)
    fill(cache, 1, 100, size=100)  # 10 kB: more than the cache may hold
    assert cache.size <= 5_000
    assert cache.latest(0.0) is None  # nothing servable from its first object: wait for the next
    fill(cache, 2, 3, size=100)
    assert cache.latest(0.0).group_id == 2


def test_bounded_by_age_and_count():
    cache = GroupCache(max_age=10.0, max_groups=3)
    fill(cache, 0, 2, now=0.0)
    fill(cache, 1, 2, now=5.0)
    fill(cache, 2, 2, now=12.0)
    assert [g.group_id for g in cache.groups_from(0, 12.0)] == [1, 2]
    for g in range(3, 8):
        fill(cache, g, 1, now=13.0)
    assert len(cache) == 3
    cache.expire(100.0)
    assert [g.group_id for g in cache.groups_from(0, 100.0)] == [7]  # the newest always stays


def test_late_objects_of_old_groups_are_ignored():
    cache = GroupCache(max_groups=2)
    fill(cache, 5, 2)
    fill(cache, 6, 2)
    cache.add(3, 0, b"late", None, 0.0)
    assert [g.group_id for g in cache.groups_from(0, 0.0)] == [5, 6]


def test_an_object_of_the_newest_group_evicts_what_got_too_old_or_too_big():
    # add() skips the eviction pass when nothing can be evicted: not when an object of the group
    # in progress makes the oldest group too old, or the cache too big
    cache = GroupCache(max_age=10.0)
    fill(cache, 0, 2, now=0.0)
    fill(cache, 1, 2, now=5.0)
    cache.add(1, 2, bytes(100), None, 9.5)
    assert [g.group_id for g in cache.groups_from(0, 9.5)] == [0, 1]  # 9.5 s old: not yet
    cache.add(1, 3, bytes(100), None, 10.5)
    assert [g.group_id for g in cache.groups_from(0, 10.5)] == [1]
    cache = GroupCache(max_bytes=1_000)
    fill(cache, 0, 5)
    fill(cache, 1, 5)
    cache.add(1, 5, bytes(100), None, 0.0)
    assert [g.group_id for g in cache.groups_from(0, 0.0)] == [1] and cache.size == 600


def test_a_group_in_subgroups_keeps_each_objects_subgroup_and_object_id_order():
    """Subgroup streams interleave as they come: the cache keeps each object's Subgroup ID and
    priority, the group in Object ID order (its largest object is the largest ID), and which
    subgroups ended while the group went on."""
    cache = GroupCache()
    for object_id, subgroup in [(0, 0), (2, 0), (4, 0), (1, 1), (3, 1)]:
        cache.add(0, object_id, b"x", None, 0.0, subgroup, 10 * (subgroup + 1), subgroup == 1)
    cache.end_subgroup(0, 0)
    [group] = cache.groups()
    assert [(o.object_id, o.subgroup, o.priority, o.end_of_group) for o in group.objects] == [
        (0, 0, 10, False), (1, 1, 20, True), (2, 0, 10, False), (3, 1, 20, True), (4, 0, 10, False)]
    assert cache.largest == (0, 4) and group.ended == {0} and not group.complete


def test_datagram_objects_out_of_order_are_kept_in_object_id_order_and_flagged():
    """Objects that came as datagrams (each in a QUIC datagram of its own, which may overtake
    another) are cached flagged so, the group in Object ID order: a late joiner and a FETCH get
    them in order, as datagram objects."""
    cache = GroupCache()
    for object_id in (0, 2, 1, 3):
        cache.add(0, object_id, b"x", None, 0.0, datagram=True)
    [group] = cache.groups()
    assert [(o.object_id, o.datagram) for o in group.objects] == [(0, True), (1, True), (2, True), (3, True)]
    assert cache.latest(0.0) is group


def test_an_in_process_frame_is_subgroup_0():
    from rtmpq.media.frames import Frame
    cache = GroupCache()
    cache.add_frame(Frame("video", 3, 0, 0, 0, True, b"x"), 90000, 0.0)
    [obj] = cache.latest(0.0).objects
    assert (obj.subgroup, obj.priority, obj.end_of_group) == (0, None, True)


def test_groups_past_the_tracks_max_cache_duration_are_no_longer_served():
    """Draft 16 MAX_CACHE_DURATION: no object is served once that long has passed since it came.
    A group whose first object came longer ago goes whole (served only from object 0), its state
    unknown (``expired_in``); a younger group stays; later objects of an expired group are not cached.
    Each read that serves takes the time and applies the limit itself: no ``expire`` call (a
    timer's) is needed before it."""
    cache = GroupCache()
    cache.max_object_age = 0.3
    fill(cache, 0, 3, now=0.0)
    fill(cache, 1, 3, now=0.2)
    # not past yet: exactly the limit
    assert cache.latest(0.3).group_id == 1 and len(cache.groups_from(0, 0.3)) == 2
    assert cache.largest_at(0.3) == (1, 2)
    assert [g.group_id for g in cache.groups_from(0, 0.4)] == [1]
    assert cache.expired_in((0, 0), (1, 0), 0.4) and not cache.expired_in((1, 0), (2, 0), 0.4)
    assert cache.largest_at(0.6) is None and cache.latest(0.6) is None
    cache.add(1, 3, bytes(10), None, 0.6)  # the rest of an expired group
    assert cache.latest(0.6) is None and cache.size == 0
    fresh = GroupCache()
    fresh.max_object_age = 0.3
    fill(fresh, 0, 3, now=0.0)
    fill(fresh, 1, 3, now=0.2)
    assert fresh.expired_in((0, 0), (1, 0), 0.4)  # the first read past the limit knows it
