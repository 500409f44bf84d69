"""Toxicity stage: 20 clean and 20 toxic paragraphs separate perfectly; config, word list, batch checks.

Run: .venv/bin/pytest tests/test_toxicity.py
"""

from __future__ import annotations

import re

import joblib
import pytest

from data_pipeline.document import Doc, Reject
from data_pipeline.stages.toxicity import ToxicityConfig, ToxicityFilter, WordList
from pretrain.core.config import ConfigError, from_dict

CLEAN = [
    "Popen.kill() kills the child process. On POSIX it sends SIGKILL to the child; on Windows kill() is an "
    "alias for terminate(). If the child does not exit after communicate() times out, the caller should kill "
    "the process and call communicate() again to collect its output, otherwise the child becomes a zombie.",
    "The abort() function causes abnormal program termination: it raises SIGABRT, and unless the signal is "
    "caught, the process dies and the kernel may write a core dump. Use gdb on the dump to inspect the stack "
    "of the thread that called abort and find out which assertion failed.",
    "cursor.execute(sql, params) executes a single SQL statement. Use executemany() to execute the same "
    "statement against a sequence of parameters. If the statement fails, the transaction is aborted and you "
    "must call rollback() before you can execute any further statements on the connection.",
    "When the interpreter hangs, faulthandler.dump_traceback_later(timeout) dumps the tracebacks of all "
    "threads after the timeout expires. This is useful to debug a test suite that hangs forever on a "
    "deadlock: the dump shows which lock each thread is waiting on.",
    "Under memory pressure the Linux OOM killer selects a victim process, usually the one with the largest "
    "resident set, and kills it with SIGKILL. A container that is killed this way exits with status 137, "
    "which is 128 plus the signal number 9.",
    "A parent process must reap its children with wait() or waitpid(). Children that have exited but have "
    "not been reaped remain in the process table as zombies. If the parent is killed, the orphaned children "
    "are adopted by init, which reaps them automatically.",
    "The kubelet runs the liveness probe every ten seconds. When the probe fails three times in a row, the "
    "container is killed and restarted according to the pod's restart policy. Pods that exceed their memory "
    "limit are killed by the kernel, and evicted pods are rescheduled on another node.",
    "pg_dump writes a consistent snapshot of a database to a file, even while the database is in use. To "
    "restore the dump, run pg_restore against an empty database. Large dumps should be taken with the "
    "directory format so that several jobs can execute in parallel.",
    "In a binary heap every parent node is smaller than its children. Inserting an element appends it as the "
    "last child and sifts it up; removing the minimum moves the last leaf to the root and sifts it down. "
    "Both operations execute in O(log n) time.",
    "A hash flooding attack sends many keys that collide in the same bucket, so that each dictionary lookup "
    "degrades to a linear scan. Python randomises the hash seed of str and bytes at startup to make such an "
    "attack impractical; set PYTHONHASHSEED to make runs reproducible.",
    "pytest-timeout aborts a test that runs longer than the configured limit. With the signal method it "
    "raises an exception in the hung test and dumps the stack of every thread; with the thread method it "
    "kills the whole process, which is the only option when a test hangs inside C code.",
    "Use the trap builtin to run cleanup code when the shell receives a signal. For example, trap 'rm -f "
    "$tmpfile' EXIT removes the temporary file however the script ends, unless it is killed with SIGKILL, "
    "which cannot be caught, blocked or ignored.",
    "The garbage collector detects reference cycles that reference counting alone cannot free. Objects "
    "that survive a collection are promoted to an older generation, which is scanned less often. Calling "
    "gc.collect() forces a full collection, and gc.freeze() moves every tracked object to a permanent "
    "generation before a fork.",
    "If the remote peer aborts the connection, recv() raises ConnectionResetError. A socket that hangs "
    "forever in connect() should be given a timeout with settimeout(); after the timeout expires the "
    "attempt is aborted with socket.timeout and the application can retry with exponential backoff.",
    "The master process of the web server accepts connections and hands them to a pool of worker "
    "processes. When a worker crashes, the master spawns a replacement; sending SIGHUP to the master "
    "reloads the configuration and gracefully kills the old workers once their requests are finished.",
    "To execute a shell script, make it executable with chmod +x and run it by path. The first line, the "
    "shebang, tells the kernel which interpreter should execute the file. Without it, the calling shell "
    "executes the script itself, which can behave differently under bash and dash.",
    "Preheat the oven to 200 degrees. Beat the eggs with the sugar until pale, fold in the flour, then pour "
    "the batter into the tin. Kill the heat after forty minutes and leave the cake in the oven to cool "
    "slowly so that it does not collapse.",
    "The longsword, sometimes called a hand-and-a-half or bastard sword, was used in Europe from about "
    "1250 to 1550. Fencing manuals of the period describe strikes, thrusts and grappling techniques, and "
    "many of them survive in libraries in Germany, Italy and England.",
    "Blue tits and great tits are among the most common visitors to garden feeders in Britain. They nest "
    "in holes in trees and readily use nest boxes; a pair may raise eight to ten chicks, feeding them "
    "thousands of caterpillars before the young fledge.",
    "Breast cancer screening with mammography is offered every two years to women aged 50 to 70. Regular "
    "screening lowers the mortality rate, although it also finds small tumours that would never have "
    "caused harm, which leads to some overtreatment.",
]

TOXIC = [
    "You are a fucking idiot. Every single thing you post is bullshit and nobody here gives a shit about "
    "your stupid opinions. Shut the fuck up and get lost, you worthless piece of shit.",
    "Listen here you stupid bitch, nobody asked for your crap. Go cry to your mommy, you dumb cunt. I am "
    "sick of seeing your ugly face on this forum.",
    "I know where you live. If you post one more word I will come to your house and kill you, and then I "
    "will kill your family too. Watch your back.",
    "Kill yourself. Seriously, the world would be better off without a pathetic loser like you. Nobody "
    "would even notice if you were gone.",
    "What a fucking moron. This asshole has no idea what he is talking about. Fuck him and fuck everyone "
    "who upvoted this shit.",
    "These filthy niggers and spics are ruining our neighborhood. Send every last one of them back where "
    "they came from.",
    "Shut up faggot. Nobody wants to hear from a retard like you. Go back to your hole and stay there.",
    "Hot horny milf wants to fuck tonight! Click here for free porn, blowjob videos, anal sex and hardcore "
    "gangbang clips. Send nudes and get a dick pic back.",
    "I swear to god I will find you and beat you to death with my bare hands. You will regret the day you "
    "were born, you miserable little rat.",
    "Fuck this shit. Fuck the mods, fuck the admins, fuck this whole goddamn website. Bunch of "
    "motherfucking cocksuckers banning people for nothing.",
    "You ugly fat slut, no man will ever touch you. Go back to the kitchen, whore, and stay there where "
    "you belong.",
    "Die in a fire, you worthless scumbag. I hope you get cancer and die slowly, and I will laugh at your "
    "funeral.",
    "Go fuck yourself, dickhead. You are such a pathetic wanker and a complete waste of oxygen.",
    "All these kikes and ragheads should be thrown out of the country. Subhuman trash, every single one of "
    "them.",
    "Hey asshole, learn to read before you open your stupid mouth. Are you retarded or just a dumbass? "
    "Jesus fucking Christ.",
    "I am going to slit your throat while you sleep. Nobody will hear you scream. Sleep tight, bitch.",
    "Suck my dick, you little pussy. You talk big on the internet, but in real life you are a spineless "
    "coward and a joke.",
    "This dumb motherfucker stole my parking spot again. Next time I see that piece of shit I will beat "
    "the shit out of him.",
    "Stupid ugly tranny freak, nobody will ever accept you. Do everyone a favour and hang yourself.",
    "What kind of brain-dead shithead writes code like this? Whoever wrote this crap should be fired "
    "and then shot. Fucking useless.",
]


def _docs(texts: list[str], prefix: str) -> list[Doc]:
    return [Doc(f"{prefix}{i}", text, "test") for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def default_stage() -> ToxicityFilter:
    return ToxicityConfig().build()


def test_default_config_rejects_every_toxic_and_keeps_every_clean(default_stage):
    toxic = [default_stage.process(d) for d in _docs(TOXIC, "t")]
    clean = [default_stage.process(d) for d in _docs(CLEAN, "c")]
    missed = [
        TOXIC[i][:40] for i, r in enumerate(toxic) if not (isinstance(r, Reject) and r.reason == "toxic")
    ]
    dropped = [(CLEAN[i][:40], r.detail) for i, r in enumerate(clean) if isinstance(r, Reject)]
    assert missed == [] and dropped == []
    assert toxic[0].detail == "score 1.00 >= 0.5; hits: fucking x1, bullshit x1, shit x1", toxic[0].detail


def test_process_batch_matches_process(default_stage):
    texts = TOXIC + CLEAN + [""]
    one_by_one, batched = _docs(texts, "x"), _docs(texts, "x")
    single = [default_stage.process(d) for d in one_by_one]
    batch = default_stage.process_batch(batched)
    assert [type(r) for r in batch] == [type(r) for r in single]
    assert [r.detail for r in batch if isinstance(r, Reject)] == [
        r.detail for r in single if isinstance(r, Reject)
    ]
    # Rejected documents are scored too, so every input's metadata can be compared.
    assert [d.metadata for d in batched] == [d.metadata for d in one_by_one]
    assert batched[-1].metadata["toxicity"] == {"score": 0.0, "wordlist": 0.0, "classifier": 0.0, "hits": 0}


def test_tag_keeps_everything_and_records_scores():
    stage = ToxicityConfig(action="tag").build()
    docs = _docs(TOXIC + CLEAN, "x")
    out = stage.process_batch(docs)
    assert out == docs
    scores = [d.metadata["toxicity"] for d in out]
    assert all(set(s) == {"score", "wordlist", "classifier", "hits"} for s in scores)
    assert all(s["score"] == round(s["score"], 4) for s in scores)
    assert (
        min(s["score"] for s in scores[: len(TOXIC)]) >= 0.5 > max(s["score"] for s in scores[len(TOXIC) :])
    )
    assert scores[0]["hits"] == 5  # fucking, bullshit, shit, fuck, "piece of shit" (one phrase hit)
    assert all(s["hits"] == 0 for s in scores[len(TOXIC) :])


def test_wordlist_alone_separates_the_set():
    stage = ToxicityConfig(classifier="none").build()
    toxic = stage.process_batch(_docs(TOXIC, "t"))
    clean = stage.process_batch(_docs(CLEAN, "c"))
    assert all(isinstance(r, Reject) and r.reason == "toxic" for r in toxic)
    assert all(isinstance(r, Doc) and r.metadata["toxicity"]["classifier"] is None for r in clean)


def test_long_clean_document_with_one_swear_word_is_kept(default_stage):
    text = " ".join(CLEAN[:8]) + " The old build system was a pile of shit, so we replaced it."
    doc = default_stage.process(Doc("long", text, "test"))
    assert isinstance(doc, Doc), doc
    assert doc.metadata["toxicity"]["hits"] == 1 and doc.metadata["toxicity"]["score"] < 0.25


def test_whole_words_case_phrases_and_stretched_letters():
    wordlist = WordList(["ass", "bitch", "son of a bitch", "fuck", "f*ck"])
    find = lambda text: wordlist.find(wordlist.tokenize(text))  # noqa: E731
    assert find("Class assessment passes; the assassin bypassed Scunthorpe.") == []
    assert find("ASS, Ass and assss") == ["ass", "ass", "ass"]
    assert find("You son of a BITCH, you bitch.") == ["son of a bitch", "bitch"]
    assert find("what the f*ck, fuuuuck") == ["f ck", "fuck"]  # "f*ck" tokenizes as ("f", "ck")


def test_custom_wordlist_path_is_honoured(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# my list\nfrobnicate\n\nblue widget\n")
    stage = ToxicityConfig(wordlist_path=str(path), classifier="none").build()
    rejected = stage.process(Doc("a", "Frobnicate the blue widget now", "test"))
    assert rejected == Reject("toxic", "score 1.00 >= 0.5; hits: frobnicate x1, blue widget x1")
    kept = stage.process(Doc("b", TOXIC[0], "test"))  # the shipped list is not used
    assert isinstance(kept, Doc) and kept.metadata["toxicity"]["hits"] == 0


def test_missing_wordlist_path_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"toxicity.wordlist_path='{missing}' does not exist")
    ):
        ToxicityConfig(wordlist_path=missing).build()


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_bad_threshold_is_a_config_error(threshold):
    with pytest.raises(ConfigError, match=r"toxicity\.threshold"):
        ToxicityConfig(threshold=threshold)
    with pytest.raises(ConfigError, match=r"toxicity\.threshold"):
        from_dict(ToxicityConfig, {"threshold": threshold})


def test_sklearn_classifier_needs_a_path_and_uses_it(tmp_path):
    with pytest.raises(ConfigError, match="toxicity.classifier_path"):
        ToxicityConfig(classifier="sklearn")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(), LogisticRegression(C=100.0))
    model.fit(
        ["you are vile garbage", "vile garbage person", "the parser reads a file", "a file per shard"],
        [1, 1, 0, 0],
    )
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    # Classifier only: the word list has no say, so the model alone decides.
    stage = ToxicityConfig(classifier="sklearn", classifier_path=str(path), wordlist_weight=0.0).build()
    vile, clean = stage.process_batch(_docs(["vile garbage", "the parser reads each file"], "s"))
    assert isinstance(vile, Reject) and vile.reason == "toxic"
    expected = round(float(model.predict_proba(["the parser reads each file"])[0, 1]), 4)
    assert isinstance(clean, Doc) and clean.metadata["toxicity"]["classifier"] == expected
