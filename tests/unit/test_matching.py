from controller.domain.jobs import Requirements
from controller.domain.matching import (
    SlotOffer,
    fits,
    jobs_per_machine,
    machine_offer,
    unmatchable_reason,
    waiting_reason,
    why_not,
)

OFFER = SlotOffer("cloud", cores=4, memory_mb=8000, tags=frozenset({"linux", "el9"}),
                  max_runtime=7200)


def test_fits_when_everything_is_enough():
    assert fits(Requirements(cores=4, memory_mb=8000, tags=frozenset({"el9"})), OFFER)


def test_why_not_names_what_is_missing():
    assert why_not(Requirements(cores=5), OFFER) == "needs 5 cores, cloud offers 4"
    assert why_not(Requirements(memory_mb=9000), OFFER) == "needs 9000 MB, cloud offers 8000 MB"
    assert "needs tags ['gpu']" in (why_not(Requirements(tags=frozenset({"gpu"})), OFFER) or "")
    assert "allows 7200s" in (why_not(Requirements(max_runtime=7201), OFFER) or "")


def test_allowed_and_banned_endpoints():
    assert fits(Requirements(endpoints=frozenset({"cloud"})), OFFER)
    assert "not in the job's allowed" in (
        why_not(Requirements(endpoints=frozenset({"other"})), OFFER) or "")
    assert "banned" in (why_not(Requirements(banned_endpoints=frozenset({"cloud"})), OFFER) or "")


def test_unmatchable_reason_lists_every_endpoint():
    small = SlotOffer("small", 2, 2000)
    assert unmatchable_reason(Requirements(cores=4), [small, OFFER]) is None
    r = unmatchable_reason(Requirements(cores=16), [small, OFFER])
    assert r == ("no endpoint can run it: needs 16 cores, small offers 2; "
                 "needs 16 cores, cloud offers 4")
    assert unmatchable_reason(Requirements(), []) == "no endpoint is configured"


def test_jobs_per_machine_is_bounded_by_slots_cores_and_memory():
    assert jobs_per_machine(Requirements(cores=1, memory_mb=100), OFFER, slots=3) == 3
    assert jobs_per_machine(Requirements(cores=2, memory_mb=100), OFFER, slots=8) == 2
    assert jobs_per_machine(Requirements(cores=1, memory_mb=3000), OFFER, slots=8) == 2


def test_platforms_are_any_of():
    el9 = SlotOffer("cloud", 4, 8000, platform="el9")
    assert fits(Requirements(platforms=frozenset({"el8", "el9"})), el9)
    assert fits(Requirements(), el9)  # a job that lists none runs anywhere
    assert why_not(Requirements(platforms=frozenset({"el8"})), el9) == (
        "needs a platform among ['el8'], cloud is el9")
    # a machine of no declared platform takes only jobs that list none
    assert "of no declared platform" in (
        why_not(Requirements(platforms=frozenset({"el9"})), OFFER) or "")


def test_required_tags_keep_other_jobs_off_a_machine():
    gpu = SlotOffer("gpu", 8, 32000, tags=frozenset({"gpu", "linux"}),
                    required_tags=frozenset({"gpu"}))
    assert fits(Requirements(tags=frozenset({"gpu"})), gpu)
    assert why_not(Requirements(), gpu) == (
        "gpu takes only jobs that ask for tags ['gpu']; the job does not ask for ['gpu']")
    # tags stay all-of: a job asking for gpu and cuda needs both
    assert not fits(Requirements(tags=frozenset({"gpu", "cuda"})), gpu)


def test_waiting_reasons_look_at_registered_machines():
    shapes = [SlotOffer("cloud", 8, 16000)]
    small = machine_offer(shapes[0], 2, 4000, ["linux"], spot=False)
    big = machine_offer(shapes[0], 8, 16000, ["linux"], spot=False)
    wide = Requirements(cores=4)
    # fits the endpoint's shape, but none of the registered machines: it says so
    r = waiting_reason(wide, shapes, [("m1", small)])
    assert r == ("none of the 1 registered machines can run it (m1: needs 4 cores, cloud "
                 "offers 2); it waits for a new machine of endpoint cloud")
    assert waiting_reason(wide, shapes, [("m1", small), ("m2", big)]) is None
    assert waiting_reason(wide, shapes, []) is None  # nothing registered: the scheduler starts
    # the endpoints' shapes come first
    assert waiting_reason(Requirements(cores=16), shapes, [("m2", big)]) == (
        "no endpoint can run it: needs 16 cores, cloud offers 8")
    # a registered machine keeps its endpoint's rules
    rules = SlotOffer("cloud", 8, 16000, platform="el9", required_tags=frozenset({"gpu"}))
    m = machine_offer(rules, 8, 16000, ["gpu"], spot=True)
    assert (m.platform, m.required_tags, m.spot, m.tags) == (
        "el9", frozenset({"gpu"}), True, frozenset({"gpu"}))
