import numpy as np
import pytest

from napari_crafts.generation.tiling import Stitcher, TileGrid, noise_field, seam_score, tile_seed


@pytest.mark.parametrize("shape", [(64, 64), (100, 230), (300, 129), (10, 500)])
def test_stitching_covers_the_region_exactly_once(shape):
    grid = TileGrid(*shape, tile=64, overlap=16)
    st = Stitcher(*shape, channels=1)
    for t in grid.tiles:
        st.add(t.y, t.x, np.full((64, 64, 1), 200, np.uint8), grid.weights(t))
    np.testing.assert_allclose(st.wsum, 1.0, atol=1e-5)  # weights of neighbours sum to one everywhere
    assert (st.read(0, 0, *shape) == 200).all()


def test_grid_geometry():
    grid = TileGrid(200, 130, tile=64, overlap=16)
    assert grid.stride == 48
    assert (grid.rows, grid.cols) == (4, 3)  # 0,48,96,144(+64=208 ≥ 200)
    assert grid.tiles[-1].box == (144, 96, 208, 160)
    assert [t.col for t in grid.tiles_touching(0, 100, 10, 101)] == [1, 2]
    with pytest.raises(ValueError, match="Overlap"):
        TileGrid(10, 10, tile=64, overlap=40)
    with pytest.raises(ValueError, match="empty"):
        TileGrid(0, 10, tile=64, overlap=0)


def test_noise_field_is_the_same_whichever_window_asks():
    big = noise_field(11, 0, 0, 64, 64)
    assert big.shape == (4, 64, 64) and abs(big.mean()) < 0.05 and abs(big.std() - 1) < 0.05
    np.testing.assert_array_equal(noise_field(11, 5, 37, 20, 27), big[:, 5:25, 37:64])
    assert not np.array_equal(noise_field(12, 5, 37, 20, 27), big[:, 5:25, 37:64])


def test_tile_seed_depends_on_seed_and_position():
    seeds = {tile_seed(s, y, x) for s in (0, 1) for y in (0, 512) for x in (0, 512)}
    assert len(seeds) == 8
    assert tile_seed(3, 1024, 2048) == tile_seed(3, 1024, 2048)


def test_seam_score_sees_a_seam():
    grid = TileGrid(128, 128, tile=64, overlap=0)
    smooth = np.tile(np.linspace(0, 255, 128, dtype=np.float32)[None, :, None], (128, 1, 3))
    b, i = seam_score(smooth, grid)
    assert b == pytest.approx(i, rel=1e-3)
    seamed = smooth.copy()
    seamed[:, 64:] += 40
    b, i = seam_score(seamed, grid)
    assert b > 5 * i


def test_tiles_touching_equals_a_brute_force_scan():
    rng = np.random.default_rng(0)
    for grid in (TileGrid(300, 250, 64, 16), TileGrid(130, 500, 50, 0), TileGrid(64, 64, 64, 32)):
        for _ in range(200):
            y0, x0 = int(rng.integers(0, grid.height)), int(rng.integers(0, grid.width))
            y1, x1 = y0 + int(rng.integers(1, 150)), x0 + int(rng.integers(1, 150))
            brute = [t for t in grid.tiles if t.y < y1 and t.y + t.size > y0 and t.x < x1 and t.x + t.size > x0]
            assert grid.tiles_touching(y0, x0, y1, x1) == brute
    assert grid.at(0, 0) == grid.tiles[0]


def test_a_window_blended_alone_is_the_same_bytes_as_that_window_of_the_whole_blend() -> None:
    from napari_crafts.generation.tiling import blend_order, blend_window

    grid = TileGrid(150, 170, 64, 16)
    rng = np.random.default_rng(3)
    images = {t: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for t in grid.tiles}
    glass = {grid.tiles[1], grid.tiles[5]}
    ordered = blend_order(grid.tiles, glass)
    assert ordered[:2] == [grid.tiles[1], grid.tiles[5]] and len(ordered) == len(grid)
    whole = blend_window(grid, (0, 0, 150, 170), ordered, images.__getitem__)
    for box in ((40, 37, 111, 130), (0, 0, 1, 1), (149, 160, 150, 170), (50, 50, 60, 60)):
        touching = grid.tiles_touching(*box)
        alone = blend_window(grid, box, blend_order(touching, glass), images.__getitem__)
        assert np.array_equal(alone, whole[box[0] : box[2], box[1] : box[3]]), box
