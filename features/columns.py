"""Column names shared by every table that crosses a stage boundary."""

USER_ID = "user_id"
ITEM_ID = "item_id"
AUTHOR_ID = "author_id"
AUTHOR = "author"
TITLE = "title"
WEIGHT = "weight"
TS = "ts"
SCORE = "score"
RANK = "rank"
SOURCES = "sources"
NEIGHBOUR_ID = "neighbour_id"
SUPPORT = "support"
N_SOURCES = "n_sources"
INB_SUPPORT = "inb_support"  # how many of the user's items list the candidate as a neighbour
INB_SUM = "inb_sum"  # the sum of those items' Pearson weights to it
