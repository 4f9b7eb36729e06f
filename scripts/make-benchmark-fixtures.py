#!/usr/bin/env python3
"""Small benchmark release files, in the official formats, with answer files full
of the replies that break scorers — for `vlmkit score`'s tests
(tests/tests/benchmarks.rs).

Writes tests/fixtures/benchmarks/<benchmark>/: the benchmark's annotation files as
the official release has them (names and layout included), LLaVA's question file
where its scorer reads one, and `answers.jsonl` in LLaVA's answer format. The
numbers the tests expect come from running the official scripts on these files
(scripts/official-benchmark-scores.py writes expected.json); nothing here
computes a score.

Standard library only:  python3 scripts/make-benchmark-fixtures.py
"""

import base64
import json
import os
import shutil
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "benchmarks")
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def png(width=2, height=2, rgb=(200, 30, 30)):
    """A tiny valid PNG."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_bytes(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def jsonl(path, rows):
    write(path, "".join(json.dumps(r) + "\n" for r in rows))


def answer(question_id, prompt, text, **extra):
    row = {"question_id": question_id, "prompt": prompt, "text": text, "answer_id": f"a{question_id}",
           "model_id": "fixture", "metadata": {}}
    row.update(extra)
    return row


def ten(*pairs):
    """Ten human answers from (answer, count) pairs."""
    out = [a for a, n in pairs for _ in range(n)]
    assert len(out) == 10, out
    return out


def pope(root):
    objects = ["dog", "cat", "car", "chair", "person", "bottle"]
    labels = ["yes", "no", "no", "yes", "yes", "no"]
    replies = {
        "adversarial": ["Yes", "Yes, there is.", "No.", "not sure", "", "No, there is not."],
        "popular": ["There is a dog. No cat.", "NO", "Nope", "no,", "yes", "No"],
        "random": ["Yes.", "yes, but not clearly", "no", "Yes", "No.", "There is no bottle."],
    }
    questions, answers, qid = [], [], 0
    for sampler in ["adversarial", "popular", "random"]:
        rows = []
        for i, (obj, label) in enumerate(zip(objects, labels)):
            qid += 1
            image = f"COCO_val2014_{qid:012d}.jpg"
            # POPE's own files number each sampler from 1.
            rows.append({"question_id": i + 1, "image": image, "text": f"Is there a {obj} in the image?", "label": label})
            text = f"Is there a {obj} in the image?\n{SHORT}"
            questions.append({"question_id": qid, "image": image, "text": text, "category": sampler})
            answers.append(answer(qid, text, replies[sampler][i]))
        jsonl(os.path.join(root, "coco", f"coco_pope_{sampler}.json"), rows)
    jsonl(os.path.join(root, "llava_pope_test.jsonl"), questions)
    jsonl(os.path.join(root, "answers.jsonl"), answers)


def gqa(root):
    def q(question, answer, structural, semantic, ops, group, balanced=True):
        return {"question": question, "answer": answer, "isBalanced": balanced, "imageId": "n1",
                "fullAnswer": answer, "types": {"structural": structural, "semantic": semantic, "detailed": "x"},
                "semantic": [{"operation": o, "dependencies": [], "argument": a} for o, a in ops],
                "groups": {"global": group, "local": "l"}, "entailed": [], "equivalent": [], "annotations": {}}

    select = ("select", "scene")
    questions = {
        "201": q("Is it overcast?", "no", "verify", "global", [select, ("verify weather", "overcast")], None),
        "202": q("Which side is the cup on?", "left", "query", "rel", [select, ("relate", "cup"), ("query", "hpos")], "hposition"),
        "203": q("What is the man wearing?", "t-shirt", "query", "rel", [select, ("relate", "wearing"), ("query", "name")], "clothing"),
        "204": q("What is on the table?", "table", "query", "obj", [select, ("query", "name")], "furniture"),
        "205": q("Is the sky blue or gray?", "blue", "choose", "attr", [select, ("choose color", "blue|gray")], "color"),
        "206": q("Are there both cups and plates?", "yes", "logical", "obj", [("exist", "cup"), ("exist", "plate"), ("and", "")], None),
        "207": q("Do the shirt and pants have the same color?", "no", "compare", "attr", [select, ("same color", "")], None),
        "208": q("Which color is the car?", "light blue", "query", "attr", [select, ("query", "color")], "color"),
        "209": q("Which side is the dog on?", "right", "query", "rel", [select, ("relate", "dog"), ("query", "hpos")], "hposition"),
        "210": q("Is the man tall or short?", "tall", "choose", "attr", [select, ("choose height", "tall|short")], None),
        "211": q("What animal is it?", "dog", "query", "cat", [select, ("query", "name")], "animal"),
        "212": q("Is it sunny?", "yes", "verify", "global", [select, ("verify weather", "sunny")], None, balanced=False),
    }
    write(os.path.join(root, "testdev_balanced_questions.json"), json.dumps(questions))
    replies = {"201": "No.", "202": "Left..", "203": "T-shirt", "204": "The table", "205": "blue",
               "206": "Yes, there are.", "207": "NO", "208": "Light blue.", "209": "right!", "210": "tall",
               "211": "dog."}
    llava, answers = [], []
    for qid, reply in replies.items():
        text = f"{questions[qid]['question']}\n{SHORT}"
        llava.append({"question_id": qid, "image": "n1.jpg", "text": text, "category": "default"})
        answers.append(answer(qid, text, reply))
    jsonl(os.path.join(root, "llava_gqa_testdev_balanced.jsonl"), llava)
    jsonl(os.path.join(root, "answers.jsonl"), answers)


def sqa(root):
    problems, answers = {}, []
    cases = [  # (choices, answer index, has image, reply)
        (["red", "blue", "green"], 0, True, "A"),
        (["red", "blue", "green"], 1, True, "B. blue"),
        (["cat", "dog", "fish"], 2, True, "(C)"),
        (["yes", "no"], 1, False, "The answer is B."),
        (["one", "two", "three", "four"], 0, True, "The answer is A. The answer is B."),
        (["sun", "moon", "star"], 2, True, "E"),
        (["hot", "cold"], 0, True, "b"),
        (["x", "y", "z", "w", "v"], 4, False, "E"),
        (["up", "down"], 0, True, ""),
        (["salt", "sugar", "sand"], 1, True, "The answer is B because it is sweet"),
        (["a", "b"], 1, False, "B"),
    ]
    test_ids = []
    for i, (choices, ans, image, reply) in enumerate(cases):
        pid = str(100 + i)
        test_ids.append(pid)
        problems[pid] = {"question": f"Question {pid}?", "choices": choices, "answer": ans, "hint": "",
                         "image": "image.png" if image else None, "task": "closed choice", "grade": "grade4",
                         "subject": "natural science", "split": "test"}
        options = "\n".join(f"{chr(65 + k)}. {c}" for k, c in enumerate(choices))
        prompt = f"Question {pid}?\nOptions: {options}"
        if image:
            prompt = "<image>\n" + prompt
        answers.append(answer(pid, prompt, reply))
    problems["900"] = {"question": "A val question?", "choices": ["a", "b"], "answer": 0, "hint": "",
                       "image": None, "split": "val"}
    write(os.path.join(root, "problems.json"), json.dumps(problems))
    write(os.path.join(root, "pid_splits.json"), json.dumps({"train": [], "val": ["900"], "test": test_ids}))
    jsonl(os.path.join(root, "answers.jsonl"), answers)


def textvqa(root):
    data = [
        {"question_id": 1, "image_id": "0a1b", "question": "What number is on the jersey?",
         "answers": ten(("2", 6), ("two", 2), ("22", 2))},
        {"question_id": 2, "image_id": "0a1b", "question": "What brand is the drink?",
         "answers": ten(("coca-cola", 4), ("coca cola", 3), ("coke", 3))},
        {"question_id": 3, "image_id": "0c2d", "question": "How much does it cost?",
         "answers": ten(("1,000", 3), ("1000", 3), ("$1,000", 4))},
        {"question_id": 4, "image_id": "0c2d", "question": "What does the sign say?",
         "answers": ten(("don't walk", 5), ("dont walk", 3), ("walk", 2))},
        {"question_id": 5, "image_id": "0e3f", "question": "What is the version?",
         "answers": ten(("3.5", 7), ("3.5.", 1), ("35", 2))},
        # The same image and question twice: the official dict keeps the last.
        {"question_id": 6, "image_id": "0e3f", "question": "What is written?",
         "answers": ten(("hello", 9), ("hi", 1))},
        {"question_id": 7, "image_id": "0e3f", "question": "What is written?",
         "answers": ten(("goodbye", 8), ("hello", 2))},
        {"question_id": 8, "image_id": "1a2b", "question": "Who made the watch?",
         "answers": ten(("unanswerable", 4), ("rolex", 6))},
    ]
    write(os.path.join(root, "TextVQA_0.5.1_val.json"), json.dumps({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}))
    shapes = [
        lambda q: f"{q}\nReference OCR token: 2, jersey\n{SHORT}",
        lambda q: f"Reference OCR token: Coca-Cola\n{q}\n{SHORT}",
        lambda q: f"{q}\n{SHORT}",
        lambda q: f"OCR tokens: DON'T WALK Question: {q} Short answer:",
        lambda q: f"{q}\nReference OCR token: 3.5\n{SHORT}",
        lambda q: f"{q}\n{SHORT}",
        lambda q: f"{q}\n{SHORT}",
        lambda q: f"{q}\n{SHORT}",
    ]
    replies = ["Two.", "The Coca-Cola", "$1,000", "Dont walk", "3.5", "hello", "Hello!", "Unanswerable"]
    answers = [answer(d["image_id"], shape(d["question"].upper() if i == 2 else d["question"]), reply)
               for i, (d, shape, reply) in enumerate(zip(data, shapes, replies))]
    jsonl(os.path.join(root, "answers.jsonl"), answers)
    # As lmms-eval asks TextVQA: without OCR tokens.
    jsonl(os.path.join(root, "answers-without-ocr.jsonl"),
          [answer(d["image_id"], f"{d['question']}\n{SHORT}", reply) for d, reply in zip(data, replies)])


def vizwiz(root):
    def entry(image, question, answers, answerable):
        return {"image": image, "question": question, "answerable": answerable,
                "answer_type": "other" if answerable else "unanswerable",
                "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}

    val = [
        entry("VizWiz_val_00000000.jpg", "What is this?", ten(("soup", 7), ("can of soup", 3)), 1),
        entry("VizWiz_val_00000001.jpg", "What color is it?", ten(("unanswerable", 8), ("blue", 2)), 0),
        entry("VizWiz_val_00000002.jpg", "How many?", ten(("2", 5), ("two", 4), ("3", 1)), 1),
        entry("VizWiz_val_00000003.jpg", "What is the time?", ten(("10:30", 6), ("1030", 4)), 1),
        entry("VizWiz_val_00000004.jpg", "What's this?", ten(("unanswerable", 10)), 0),
    ]
    write(os.path.join(root, "val.json"), json.dumps(val))
    suffix = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
    replies = ["Soup.", "Unanswerable", "two", "10:30", "It is a remote"]
    jsonl(os.path.join(root, "answers.jsonl"),
          [answer(i, f"{e['question']}\n{suffix}", r) for i, (e, r) in enumerate(zip(val, replies))])
    test = [{"image": f"VizWiz_test_{i:08d}.jpg", "question": q} for i, q in enumerate(["What is it?", "Which button?", "Read it"])]
    write(os.path.join(root, "test", "test.json"), json.dumps(test))
    jsonl(os.path.join(root, "test", "llava_test.jsonl"),
          [{"question_id": i, "image": t["image"], "text": f"{t['question']}\n{suffix}"} for i, t in enumerate(test)])
    jsonl(os.path.join(root, "test", "answers.jsonl"),
          [answer(i, f"{t['question']}\n{suffix}", r) for i, (t, r) in enumerate(zip(test, ["A can.", "The red one", "UNANSWERABLE"]))])


def vqav2(root):
    def ann(qid, answer_type, answers):
        return {"question_id": qid, "image_id": 42, "answer_type": answer_type, "question_type": "what",
                "multiple_choice_answer": answers[0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)]}

    annotations = [
        ann(4200, "yes/no", ten(("yes", 9), ("no", 1))),
        ann(4201, "number", ten(("2", 6), ("two", 2), ("3", 2))),
        ann(4202, "other", ten(("frisbee", 5), ("disc", 3), ("a frisbee", 2))),
        ann(4203, "other", ten(("man's", 4), ("mans", 3), ("man", 3))),
        ann(4204, "number", ten(("10", 10))),
    ]
    write(os.path.join(root, "v2_mscoco_val2014_annotations.json"), json.dumps({"annotations": annotations, "data_subtype": "val2014"}))
    replies = ["Yes", "3", "disc", "Man's", "ten"]
    jsonl(os.path.join(root, "answers.jsonl"), [answer(a["question_id"], f"q?\n{SHORT}", r) for a, r in zip(annotations, replies)])
    test = [{"question_id": 9000 + k, "image": f"COCO_test2015_{k:012d}.jpg", "text": f"q{k}?\n{SHORT}", "category": "default"} for k in range(4)]
    jsonl(os.path.join(root, "test", "llava_vqav2_mscoco_test2015.jsonl"), test)
    # A test-dev run answers part of test2015.
    jsonl(os.path.join(root, "test", "answers.jsonl"),
          [answer(t["question_id"], t["text"], r) for t, r in zip(test[:3], ["Yes.", "Two", "the Dog's"])])


def mme(root):
    release = os.path.join(root, "MME_Benchmark_release_version")
    layout = {  # subtask: (images/ + questions_answers_YN layout?, images)
        "existence": (False, ["000000006040", "000000008277"]), "count": (False, ["000000001"]),
        "position": (False, ["000000002"]), "color": (False, ["000000003"]),
        "posters": (True, ["tt0048545"]), "celebrity": (True, ["tt0032138_shot_0395"]),
        "scene": (True, ["Places365_val_00000001"]), "landmark": (True, ["0006"]),
        "artwork": (True, ["10002"]), "OCR": (False, ["0001"]),
        "commonsense_reasoning": (False, ["0001"]), "numerical_calculation": (False, ["0001"]),
        "text_translation": (False, ["0001"]), "code_reasoning": (False, ["0020"]),
    }
    replies = iter(["Yes", "No", "yes.", "eyes", "  yes", "No", "Not sure", "know", "Unknown", "No",
                    "", "no", "The answer is yes", "Yes", "Yes, it is", "nope", "YES", "No.", "yes", "no",
                    "Yes", "N/A", "no", "No", "Yes", "No", "y", "n", "Yes", "No", "Yes", "No"])
    answers = []
    for subtask, (nested, images) in layout.items():
        image_dir = os.path.join(release, subtask, "images") if nested else os.path.join(release, subtask)
        qa_dir = os.path.join(release, subtask, "questions_answers_YN") if nested else image_dir
        for stem in images:
            extension = ".jpg" if nested else ".png"
            write_bytes(os.path.join(image_dir, stem + extension), png())
            # Two-space forms occur in MME's color, count and position files.
            spacing = "  " if subtask == "color" else " "
            qa = [(f"Is there a red thing in this {subtask} image?{spacing}Please answer yes or no.", "Yes"),
                  (f"Is there a green thing in this {subtask} image?{spacing}Please answer yes or no.", "No")]
            # Some release files end without a newline.
            text = "\n".join(f"{q}\t{a}" for q, a in qa) + ("" if subtask == "count" else "\n")
            write(os.path.join(qa_dir, stem + ".txt"), text)
            qid = f"{subtask}/images/{stem}{extension}" if nested else f"{subtask}/{stem}{extension}"
            for question, _ in qa:
                prompt = question.replace("  Please answer yes or no.", "").replace(" Please answer yes or no.", "")
                answers.append(answer(qid, f"{prompt}\n{SHORT}", next(replies)))
    jsonl(os.path.join(root, "answers.jsonl"), answers)


def mmbench(root):
    image = base64.b64encode(png()).decode()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    base = [  # (question, hint, options, answer index, category, l2)
        ("Which animal is shown?", "nan", ["cat", "dog", "teddy bear", "rabbit"], 1, "image_scene", "coarse_perception"),
        ("What is the weather?", "Look at the sky.", ["sunny", "rainy", "snowy"], 0, "image_emotion", "coarse_perception"),
        ("Is the cup left of the plate?", "nan", ["yes", "no"], 1, "spatial_relationship", "relation_reasoning"),
    ]
    replies = {  # per question, per rotated copy
        0: ["B", "A.", "(D)", "Answer: C"],
        1: ["A. sunny", "It is sunny", "The answer is sunny"],
        2: ["B", "A B"],
    }
    rows, answers = [], []
    for q, (question, hint, options, ans, category, l2) in enumerate(base):
        for copy in range(len(options)):
            rotated = options[copy:] + options[:copy]
            index = q + copy * 1_000_000
            gold = chr(65 + rotated.index(options[ans]))
            cells = rotated + [""] * (4 - len(rotated))
            rows.append([str(index), question, hint, *cells, gold, category, image, "fixture", l2, "nan", "dev"])
            prompt = ("" if hint == "nan" else hint + "\n") + question + "".join(
                f"\n{chr(65 + k)}. {o}" for k, o in enumerate(rotated))
            answers.append(answer(index, prompt, replies[q][copy], round_id=0, options=rotated,
                                  option_char=[chr(65 + k) for k in range(len(rotated))]))
    write(os.path.join(root, "mmbench_dev_20230712.tsv"), "\n".join("\t".join(r) for r in [header] + rows) + "\n")
    jsonl(os.path.join(root, "answers.jsonl"), answers)


def seed(root):
    types = {"Scene Understanding": 1, "Instance Identity": 2, "Instance Attributes": 3, "Instance Location": 4,
             "Instances Counting": 5, "Spatial Relation": 6, "Instance Interaction": 7, "Visual Reasoning": 8,
             "Text Understanding": 9, "Action Recognition": 10, "Action Prediction": 11, "Procedure Understanding": 12}
    # convert_seed_for_submission.py stops with KeyError on a question type whose
    # answers are all wrong: every type here has a right one.
    replies = ["A", "A.", "a", "(B)", "The answer is C", "", "C", "D", "A", "B", "C", "d"]
    questions, llava, answers = [], [], []
    for k, reply in enumerate(replies):
        type_id = 1 + k % 3
        qid = str(101669 + k)
        q = {"answer": "ABCD"[k % 4], "choice_a": "one", "choice_b": "two", "choice_c": "three", "choice_d": "four",
             "data_id": f"1454426_{k}", "data_type": "image", "question": f"How many things ({k})?",
             "question_id": qid, "question_type_id": type_id}
        questions.append(q)
        text = q["question"] + "".join(f"\n{l}. {q['choice_' + l.lower()]}" for l in "ABCD") + "\n" + LETTER
        llava.append({"image": f"SEED-Bench-image/{q['data_id']}", "text": text, "category": [n for n, i in types.items() if i == type_id][0], "question_id": int(qid)})
        answers.append(answer(int(qid), text, reply))
    questions.append({"answer": "B", "choice_a": "run", "choice_b": "jump", "choice_c": "sit", "choice_d": "swim",
                      "data_id": "94328.webm", "data_type": "video", "question": "What is the action?",
                      "question_id": "v1738", "question_type_id": 10})
    write(os.path.join(root, "SEED-Bench.json"), json.dumps({"questions": questions, "question_type": types}))
    jsonl(os.path.join(root, "llava-seed-bench.jsonl"), llava)
    jsonl(os.path.join(root, "answers.jsonl"), answers)


def mmmu(root):
    fruit = ["apple", "banana", "cherry", "date"]
    cases = [  # (id, type, ground truth, options, reply)
        ("validation_Art_1", "multiple-choice", "B", fruit, "(B)"),
        ("validation_Art_2", "multiple-choice", "A", fruit, "I think the answer is banana because it is yellow"),
        ("validation_Art_3", "multiple-choice", "C", fruit, "**C**"),
        ("validation_Art_4", "multiple-choice", "D", fruit, "The correct option is D. date"),
        ("validation_Math_1", "short-answer", "3.14", None, "x = 3.14159"),
        ("validation_Math_2", "short-answer", "1000", None, "The answer is 1,000.5 so"),
        ("validation_Math_3", "multiple-choice", "A", ["1", "2", "3"], "a"),
        ("validation_Math_4", "short-answer", ["24/7", "3.429"], None, "It is 3.429 roughly"),
        ("validation_Biology_1", "short-answer", "hormone", None, "Insulin is a hormone."),
        ("validation_Biology_2", "short-answer", "C", None, "c"),
        ("validation_Biology_3", "multiple-choice", "B", ["mitosis", "meiosis"], "B)"),
        ("validation_Architecture_and_Engineering_1", "short-answer", "1.06", None, "Thus the value is 1.055"),
    ]
    answer_dict, answers = {}, []
    for qid, kind, truth, options, reply in cases:
        answer_dict[qid] = {"question_type": kind, "ground_truth": truth}
        extra = {"options": options} if options else {}
        answers.append(answer(qid, f"<image 1> Question {qid}?", reply, **extra))
    write(os.path.join(root, "answer_dict_val.json"), json.dumps(answer_dict))
    jsonl(os.path.join(root, "answers.jsonl"), answers)


def mmvet(root):
    questions = {f"v1_{k}": {"imagename": f"v1_{k}.png", "question": f"What is {k}?", "answer": "x", "capability": "rec"} for k in range(3)}
    write(os.path.join(root, "mm-vet.json"), json.dumps(questions))
    jsonl(os.path.join(root, "answers.jsonl"),
          [answer(k, f"What is {k}?", r) for k, r in enumerate(["A cat.", "Two dogs, \"quoted\"", "Ünïcode →"])])


def main():
    if os.path.isdir(ROOT):
        for entry in os.listdir(ROOT):
            if entry != "expected.json":
                shutil.rmtree(os.path.join(ROOT, entry))
    for name, make in [("pope", pope), ("gqa", gqa), ("sqa", sqa), ("textvqa", textvqa), ("vizwiz", vizwiz),
                       ("vqav2", vqav2), ("mme", mme), ("mmbench", mmbench), ("seed", seed), ("mmmu", mmmu),
                       ("mmvet", mmvet)]:
        make(os.path.join(ROOT, name))
    print(f"wrote {os.path.normpath(ROOT)}")


if __name__ == "__main__":
    main()
