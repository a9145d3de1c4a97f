"""Cuts a large sky image into small images with the source extractor's boxes: a data set folder
that `tools/train.py --data` reads (docs/OWN_DATA.md, "A real example").

  python tools/cut_field.py --out data/hubble            # scikit-image's Hubble Deep Field
  python tools/cut_field.py --field sky.png --out DIR [--crop_px 25 --stride_px 6 ...]

Writes DIR/train/ and DIR/test/ (crops of two regions of the field that share no sky, PNGs with
annotations.json, the boxes of the source extractor SEP) and DIR/field.json (the parameters and
the count histograms). Logic: asr_tf.data.field, asr_tf.data.extractor.
"""
from absl import app, flags

from asr_tf.data import extractor, field
from asr_tf.data.images import DataError

_CUT, _SEP = field.CutParams(), extractor.ExtractorParams()
flags.DEFINE_string("field", field.HUBBLE, "'hubble' (scikit-image's Hubble Deep Field, "
                    "offline) or a PNG or JPEG file")
flags.DEFINE_string("out", None, "the new data set folder", required=True)
flags.DEFINE_integer("crop_px", _CUT.crop_px, "side of a crop, px of the field")
flags.DEFINE_integer("stride_px", _CUT.stride_px, "between training crops' corners, px")
flags.DEFINE_integer("test_stride_px", _CUT.test_stride_px, "between test crops' corners, px")
flags.DEFINE_float("test_frac", _CUT.test_frac, "the field's rightmost columns that are the "
                   "test region, a fraction of its width")
flags.DEFINE_integer("gap_px", _CUT.gap_px, "guard columns between the regions, px")
flags.DEFINE_integer("min_count", _CUT.min_count, "least extractor count of a written crop")
flags.DEFINE_integer("max_count", _CUT.max_count, "most extractor count of a written crop")
flags.DEFINE_float("thresh_sigma", _SEP.thresh_sigma, "detection threshold, x the rms")
flags.DEFINE_integer("minarea_px", _SEP.minarea_px, "least pixels of a source")
flags.DEFINE_integer("deblend_nthresh", _SEP.deblend_nthresh, "deblending levels")
flags.DEFINE_float("deblend_cont", _SEP.deblend_cont, "deblending contrast (1: none)")
flags.DEFINE_bool("clean", _SEP.clean, "remove detections in bright sources' wings")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cut = field.CutParams(**{k: FLAGS[k].value for k in field.CutParams.__dataclass_fields__})
    sep = extractor.ExtractorParams(
        **{k: FLAGS[k].value for k in extractor.ExtractorParams.__dataclass_fields__})
    try:
        record = field.write_field(field.load_field(FLAGS.field), FLAGS.out, cut, sep,
                                   source=FLAGS.field)
    except (DataError, ValueError) as err:
        raise app.UsageError(str(err))
    for split, r in record["splits"].items():
        print(f"{split}: columns {r['columns']}, {r['written']} of {r['crops']} crops written "
              f"(counts of all crops {r['count_hist_all']}, written {r['count_hist_written']}; "
              f"source sides p5-p95 {r['side_px_percentiles']} px)")


if __name__ == "__main__":
    app.run(main)
