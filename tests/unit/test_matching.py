from controller.domain.jobs import Requirements
from controller.domain.matching import (
    SlotOffer,
    fits,
    jobs_per_machine,
    unmatchable_reason,
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
