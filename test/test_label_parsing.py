"""Finding EMOTIC labels in generated text, and the prompt/marking helpers (no model needed)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from emotion_perception.core import prompts
from emotion_perception.core.categories import EMOTIC_CATEGORIES
from emotion_perception.core.label_parsing import (CATEGORY_FORMS, labels_to_scores,
                                                   parse_labels, parse_labels_paper)
from emotion_perception.core.types import BBox


@pytest.mark.parametrize('text, expected', [
    ('Happiness, Engagement', ['Engagement', 'Happiness']),
    ('happy', ['Happiness']),
    ('HAPPY!', ['Happiness']),
    ('He is angry and annoyed.', ['Anger', 'Annoyance']),
    ('fearful', ['Fear']), ('afraid', ['Fear']), ('scared', ['Fear']),
    ('sad', ['Sadness']), ('surprised', ['Surprise']), ('confident', ['Confidence']),
    ('excited', ['Excitement']), ('tired', ['Fatigue']), ('fatigued', ['Fatigue']),
    ('peaceful', ['Peace']), ('engaged', ['Engagement']), ('embarrassed', ['Embarrassment']),
    ('sympathetic', ['Sympathy']), ('disconnected', ['Disconnection']),
    ('doubtful', ['Doubt/Confusion']), ('confused', ['Doubt/Confusion']),
    ('Doubt', ['Doubt/Confusion']), ('Confusion', ['Doubt/Confusion']),
    ('Doubt/Confusion', ['Doubt/Confusion']),
    ('Emotions: Yearning; Pain; Esteem.', ['Esteem', 'Pain', 'Yearning']),
])
def test_forms_map_to_categories(text, expected):
    parsed = parse_labels(text)
    assert parsed.labels == expected
    assert parsed.found


def test_every_category_name_is_found_in_emotic_order():
    text = ', '.join(reversed(EMOTIC_CATEGORIES))
    assert parse_labels(text).labels == list(EMOTIC_CATEGORIES)
    assert set(CATEGORY_FORMS) == set(EMOTIC_CATEGORIES)


@pytest.mark.parametrize('text', ['painting a wall', 'unhappy', 'the peacefulness of fearlessly',
                                  'sadder tiredly', 'Happyland', 'a disengagement'])
def test_no_matches_inside_other_words(text):
    labels = parse_labels(text).labels
    assert 'Pain' not in labels and 'Happiness' not in labels and 'Fear' not in labels
    assert 'Engagement' not in labels


def test_unhappy_is_sadness_not_happiness():
    assert parse_labels('She looks unhappy').labels == ['Sadness']


@pytest.mark.parametrize('text, labels, negated', [
    ('not happy', [], ['Happiness']),
    ('The person is not happy.', [], ['Happiness']),
    ('She does not feel any fear', [], ['Fear']),
    ('no anger at all', [], ['Anger']),
    ("He isn't sad", [], ['Sadness']),
    ('not happy, but sad', ['Sadness'], ['Happiness']),
    ('happy, not angry', ['Happiness'], ['Anger']),
    # a category named once negated and once plainly counts
    ('not happy at first; later happy', ['Happiness'], []),
    # beyond the 3-word window the negation no longer applies (documented minimal rule)
    ('not at all in a way happy', ['Happiness'], []),
])
def test_negation_rule(text, labels, negated):
    parsed = parse_labels(text)
    assert parsed.labels == labels
    assert parsed.negated == negated
    assert parsed.found == bool(labels)


@pytest.mark.parametrize('text, labels, negated', [
    # negation over lists and verb phrases (issue: "name none of those")
    ('He does not seem to feel anger or fear.', [], ['Anger', 'Fear']),
    ('There are no signs of pain, suffering or fatigue.', [], ['Fatigue', 'Pain', 'Suffering']),
    ('She lacks confidence.', [], ['Confidence']),
    ("He doesn't appear to be sad at all.", [], ['Sadness']),
    ('The woman is not in pain', [], ['Pain']),
    ('neither angry nor annoyed', [], ['Anger', 'Annoyance']),
    # the scope ends at a contrast, a clause break, or a word that is not verb-phrase filler
    ('He does not seem angry but rather sad.', ['Sadness'], ['Anger']),
    ('There is no doubt she is happy.', ['Happiness'], ['Doubt/Confusion']),
    ('not only happy but also excited', ['Excitement', 'Happiness'], []),
    ('No fear; she is excited.', ['Excitement'], ['Fear']),
    ('She is smiling and does not look tired, she looks engaged',
     ['Engagement'], ['Fatigue']),
])
def test_negation_scope_over_lists_and_verb_phrases(text, labels, negated):
    parsed = parse_labels(text)
    assert parsed.labels == labels
    assert parsed.negated == negated


@pytest.mark.parametrize('text, labels', [
    # the authors' protocol: the lower-case category name anywhere in the lower-cased answer
    ('Happiness, Engagement', ['Engagement', 'Happiness']),
    ('not happy', []),                        # no adjective forms
    ('No Happiness here', ['Happiness']),     # no negation
    ('unhappiness', ['Happiness']),           # substrings count
    ('painting', ['Pain']),
    ('doubt', []),                            # 'doubt/confusion' is one name
    ('Doubt/Confusion', ['Doubt/Confusion']),
])
def test_paper_parser(text, labels):
    assert parse_labels_paper(text).labels == labels
    assert parse_labels_paper(text).found == bool(labels)


def test_nothing_found():
    parsed = parse_labels('I cannot tell from this picture.')
    assert parsed.labels == [] and not parsed.found


def test_labels_to_scores():
    scores = labels_to_scores(['Fear', 'Anger'])
    assert scores.shape == (26,) and scores.dtype == np.float32
    assert scores.sum() == 2 and scores[EMOTIC_CATEGORIES.index('Fear')] == 1.0


# -- prompts -----------------------------------------------------------------------------------
def test_paper_prompt_lists_all_categories_and_the_red_box():
    text = prompts.build_prompt()
    assert all(c in text for c in EMOTIC_CATEGORIES)
    assert 'red bounding box' in text
    star = prompts.build_prompt(definitions=True, num_labels=6)
    assert all(f'- {c}: ' in star for c in EMOTIC_CATEGORIES)
    assert 'exactly 6' in star
    assert 'red' not in prompts.build_prompt('crop')


def test_score_queries():
    queries = prompts.score_queries()
    assert len(queries) == 29
    assert queries[0] == 'Answer yes or no: does the person in the red box feel Affection?'
    assert queries[9] == 'Answer yes or no: does the person in the red box feel Doubt/Confusion?'
    assert queries[26].startswith('Answer with one digit from 0 to 9:')
    assert 'pleasant' in queries[26]
    # the wording shared by a question kind comes first: questions differ only at the end
    cats = queries[:26]
    common = min(len(os.path.commonprefix([cats[0], q])) for q in cats[1:])
    assert cats[0][:common] == 'Answer yes or no: does the person in the red box feel '


# -- image marking -----------------------------------------------------------------------------
def _image():
    return np.full((60, 80, 3), 100, dtype=np.uint8)


def test_red_box_on_full_frame():
    img = _image()
    out = prompts.mark_image(img, BBox(10, 20, 50, 55))
    assert out.shape == img.shape and np.all(img == 100)  # input untouched
    assert tuple(out[20, 30]) == (255, 0, 0) and tuple(out[54, 30]) == (255, 0, 0)
    assert tuple(out[40, 10]) == (255, 0, 0) and tuple(out[40, 49]) == (255, 0, 0)
    assert tuple(out[40, 30]) == (100, 100, 100)  # inside stays
    assert tuple(out[5, 5]) == (100, 100, 100)  # outside stays


def test_crop_and_crop_context():
    img = np.arange(60 * 80 * 3, dtype=np.uint32).reshape(60, 80, 3).astype(np.uint8)
    box = BBox(10, 20, 50, 55)
    c = prompts.mark_image(img, box, 'crop')
    assert c.shape == (35, 40, 3) and np.array_equal(c, img[20:55, 10:50])
    ctx = prompts.mark_image(img, box, 'crop_context')
    # grown by half the box size on each side (outward to whole pixels), clipped to the image:
    # x -10..70 -> 0..70, y 2.5..72.5 -> 2..60
    assert ctx.shape == (60 - 2, 70, 3)
    assert tuple(ctx[20 - 2, 30]) == (255, 0, 0)  # the box's top edge, shifted into the crop
    assert np.array_equal(ctx[0, 0], img[2, 0])


def test_unknown_marking():
    with pytest.raises(ValueError, match='marking'):
        prompts.mark_image(_image(), BBox(0, 0, 10, 10), 'blue')
