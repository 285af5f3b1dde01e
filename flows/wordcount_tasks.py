"""Word counts: each part counted where it runs, the counts merged where merge runs."""
from cmflow import command


def count(i):
    # data/part{i}.txt is placed in the job's work directory; counts.txt comes back verified
    return command(f"tr -s ' ' '\\n' < data/part{i}.txt | sort | uniq -c | awk '{{print $2, $1}}' > counts.txt",
                   inputs=[f"data/part{i}.txt"], outputs=["counts.txt"])


def merge(parts):
    # parts: the names the sixteen counts.txt have in merge's work directory (1-count/counts.txt, ...)
    return command("cat " + " ".join(parts) + " | awk '{n[$1] += $2} END {for (w in n) print w, n[w]}' "
                   "| sort > total.txt", outputs=["total.txt"])
