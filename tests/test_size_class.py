"""The class table against values derived independently of zramd's code."""

from __future__ import annotations

import pytest

from zramd.size_class import build_class_table, chain_size, class_index, fullness_group

# Recomputed by hand from mm/zsmalloc.c for CONFIG_ZSMALLOC_CHAIN_SIZE=8
# (../shared/reference/zram-kernel-interface.md, section 3.3): index:size/pages/objs.
KERNEL_CHAIN8 = """
0:32/1/128 1:48/3/256 2:64/1/64 3:80/5/256 4:96/3/128 5:112/7/256 6:128/1/32 7:144/7/199 8:160/5/128
9:176/4/93 10:192/3/64 11:208/3/59 12:224/7/128 13:240/1/17 14:256/1/16 15:272/1/15 16:288/5/71
17:304/7/94 18:320/5/64 19:336/6/73 20:352/8/93 21:368/8/89 22:384/3/32 23:400/5/51 24:416/6/59
25:432/7/66 26:448/7/64 27:464/5/44 28:480/2/17 29:496/4/33 30:512/1/8 31:528/4/31 32:544/2/15
33:560/7/51 34:576/1/7 35:592/8/55 36:608/7/47 37:624/2/13 38:640/5/32 39:656/5/31 40:672/1/6
41:688/8/47 42:704/5/29 43:720/3/17 44:736/2/11 45:752/7/38 46:768/3/16 47:784/5/26 49:816/1/5
50:832/8/39 51:848/5/24 52:864/7/33 53:880/8/37 54:896/7/32 55:912/7/31 56:928/5/22 57:944/3/13
58:960/4/17 59:976/6/25 60:992/8/33 62:1024/1/4 64:1056/8/31 65:1072/5/19 66:1088/4/15 67:1104/3/11
68:1120/8/29 69:1136/5/18 71:1168/2/7 72:1184/7/24 73:1200/5/17 74:1216/3/10 75:1232/7/23
76:1248/4/13 78:1280/5/16 79:1296/7/22 83:1360/1/3 87:1424/8/23 88:1440/6/17 89:1456/5/14
91:1488/4/11 92:1504/7/19 94:1536/3/8 95:1552/8/21 96:1568/5/13 97:1584/7/18 100:1632/2/5
103:1680/7/17 104:1696/5/12 105:1712/8/19 107:1744/3/7 110:1792/7/16 111:1808/4/9 114:1856/5/11
116:1888/6/13 117:1904/7/15 118:1920/8/17 126:2048/1/2 134:2176/8/15 135:2192/7/13 137:2224/6/11
140:2272/5/9 144:2336/4/7 147:2384/7/12 151:2448/3/5 155:2512/8/13 158:2560/5/8 160:2592/7/11
168:2720/2/3 177:2864/7/10 180:2912/5/7 184:2976/8/11 190:3072/3/4 197:3184/7/9 202:3264/4/5
211:3408/5/6 217:3504/6/7 222:3584/7/8 225:3632/8/9 254:4096/1/1
"""


def parse(table: str) -> list[tuple[int, int, int, int]]:
    rows = []
    for item in table.split():
        index, rest = item.split(":")
        size, pages, objs = rest.split("/")
        rows.append((int(index), int(size), int(pages), int(objs)))
    return rows


def test_chain8_matches_the_kernel_table() -> None:
    table = build_class_table(8)
    got = [(c.index, c.size, c.pages_per_zspage, c.objs_per_zspage) for c in table.classes]
    assert got == parse(KERNEL_CHAIN8)
    assert table.huge_class_size == 3625


@pytest.mark.parametrize(
    ("chain", "distinct", "largest_normal", "huge_class_size"),
    [(4, 69, 3264, 3257), (8, 119, 3632, 3625), (16, 192, 3840, 3833)],
)
def test_chain_sizes(chain: int, distinct: int, largest_normal: int, huge_class_size: int) -> None:
    table = build_class_table(chain)
    assert len(table.classes) == distinct
    assert table.huge_class_size == huge_class_size
    normal = [c.size for c in table.classes if not c.huge]
    assert max(normal) == largest_normal
    assert all(c.pages_per_zspage <= chain for c in table.classes)


def test_documented_waste_example() -> None:
    # Documentation/mm/zsmalloc.rst: 1568-byte objects waste 960/352/1312/704/96 bytes for chains
    # of 1..5 frames, so five frames holding 13 objects.
    assert chain_size(1568) == 5
    spec = build_class_table(8).for_size(1568 - 8)
    assert (spec.size, spec.pages_per_zspage, spec.objs_per_zspage) == (1568, 5, 13)


def test_lookup_adds_the_header_and_merges() -> None:
    table = build_class_table(8)
    assert table.for_size(1).size == 32
    assert table.for_size(24).size == 32
    assert table.for_size(25).size == 48  # 25 + 8 > 32
    assert table.for_size(3624).size == 3632
    assert table.for_size(3625).huge
    assert table.for_size(4096).huge
    # slot 48 (size 800) merged into 816: same (1 page, 5 objs) geometry
    assert table.by_index[48].size == 816
    assert class_index(4104) == 254


@pytest.mark.parametrize("bad", [0, -1, 4097])
def test_lookup_rejects_bad_sizes(bad: int) -> None:
    with pytest.raises(ValueError, match=str(bad)):
        build_class_table(8).for_size(bad)


@pytest.mark.parametrize("chain", [3, 17])
def test_chain_bounds(chain: int) -> None:
    with pytest.raises(ValueError, match="chain size"):
        build_class_table(chain)


def test_fullness_groups() -> None:
    assert fullness_group(0, 127) == 0
    assert fullness_group(1, 127) == 1  # 0 % rounds into the 10 % group
    assert fullness_group(13, 127) == 2
    assert fullness_group(126, 127) == 10
    assert fullness_group(127, 127) == 11
    assert fullness_group(1, 2) == 6
