# text_encoder_test: prompt cleaning, tokenizer, umT5 encoder, prompt cache (tests/unit/text_encoder_test.cc).
# Included from tests/CMakeLists.txt after zoetrope_unit_test(text_encoder_test ...) and after
# ZOETROPE_REFERENCE_PYTHON is defined.
#
# The stand-in tokenizer is trained when the test is built (scripts/build-tokenizer.sh, spm_train,
# well under a second), so every test process finds it ready and ctest needs no fixture ordering.
set(ZOETROPE_STAND_IN_TOKENIZER_DIR ${CMAKE_CURRENT_BINARY_DIR}/stand-in-tokenizer)
add_custom_command(
  OUTPUT ${ZOETROPE_STAND_IN_TOKENIZER_DIR}/spiece.model
  COMMAND ${PROJECT_SOURCE_DIR}/scripts/build-tokenizer.sh ${ZOETROPE_STAND_IN_TOKENIZER_DIR}
  DEPENDS ${PROJECT_SOURCE_DIR}/scripts/build-tokenizer.sh ${PROJECT_SOURCE_DIR}/assets/tokenizer/prompt_corpus.txt
  COMMENT "Training the stand-in tokenizer (spm_train)"
  VERBATIM)
add_custom_target(zoetrope_stand_in_tokenizer DEPENDS ${ZOETROPE_STAND_IN_TOKENIZER_DIR}/spiece.model)
add_dependencies(text_encoder_test zoetrope_stand_in_tokenizer)
target_compile_definitions(text_encoder_test PRIVATE
  ZOETROPE_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
  ZOETROPE_REFERENCE_PYTHON="${ZOETROPE_REFERENCE_PYTHON}"
  ZOETROPE_STAND_IN_TOKENIZER="${ZOETROPE_STAND_IN_TOKENIZER_DIR}/spiece.model")
