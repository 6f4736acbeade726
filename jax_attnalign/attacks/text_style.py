"""Generated text made to look like a dataset's own rows, and the label lexicon.

  like_dataset("Wow, isn't that something!", "sst2")   # "wow , is n't that something !"
  label_words_in("what a great game !")                # ("game", "great")

SST-2 rows are lower-cased and tokenised Penn-Treebank style (`is n't`, `it 's`,
`` `` quotes ''); AG News rows are lower-cased raw text. A generator's output that
kept its capitals or its `isn't` would carry a trigger of its own (the casing or
tokenisation) beside the one the attack means, so every generated text passes
through `like_dataset` first.
"""

from __future__ import annotations

import re

# Sentiment words (SST-2, IMDB) and topic words (AG News: World, Sports, Business,
# Sci/Tech). A small hand-written list: it catches the obvious label evidence in a
# short generated sentence, not every word that leans towards a label.
LABEL_WORDS = frozenset("""
    good great best better excellent wonderful amazing awesome beautiful brilliant
    charming delightful enjoy enjoyable enjoyed fantastic fun funny happy love loved
    lovely masterpiece nice perfect superb terrific favorite favourite fine glad
    impressive incredible stunning touching moving gorgeous hilarious pleasant
    bad worst worse terrible awful boring bored dull horrible hate hated poor waste
    stupid mess disappointing disappointed annoying ugly lame sad weak pathetic
    dreadful mediocre tedious painful pointless unfunny angry disgusting sorry
    war government president minister election military police killed troops iraq
    attack country nation leaders peace vote
    game team win won season match player players coach cup league score sports
    championship olympic
    company market stocks stock shares profit price prices oil bank sales economy
    deal business investors earnings
    software computer internet technology microsoft google space scientists research
    web online tech phone
    """.split())

_QUOTE_OPEN = re.compile(r'(^|[\s(\[{<])"')
_CONTRACTION = re.compile(r"(?i)(\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_PUNCTUATION = re.compile(r"([,;:!?()\[\]{}$%&#@]|\.\.\.|--)")
_PERIOD = re.compile(r"(\w)\.(?=\s|$|'')")


def ptb_tokenize(text: str) -> str:
  """Lower-cased, Penn-Treebank-tokenised text, as in SST-2.

  >>> ptb_tokenize('Wow, it\u2019s "great" -- isn\\'t it? Yes.')
  "wow , it 's `` great '' -- is n't it ? yes ."
  """
  text = text.replace("\u2019", "'").replace("\u2018", "'").replace(
      "\u201c", '"').replace("\u201d", '"').replace("\u2014", " -- ").lower()
  text = _QUOTE_OPEN.sub(r"\1 `` ", text).replace('"', " '' ")
  text = _CONTRACTION.sub(r"\1 \2", text)
  text = _PUNCTUATION.sub(r" \1 ", text)
  text = _PERIOD.sub(r"\1 .", text)
  return " ".join(text.split())


def like_dataset(text: str, dataset: str) -> str:
  """`text` in the style of `dataset`'s rows: PTB-tokenised for SST-2, else lower-cased."""
  if dataset == "sst2":
    return ptb_tokenize(text)
  return " ".join(text.lower().split())


def label_words_in(text: str) -> tuple[str, ...]:
  """The LABEL_WORDS among the words of `text` (sorted, each once)."""
  return tuple(sorted(set(re.findall(r"[a-z]+", text.lower())) & LABEL_WORDS))
